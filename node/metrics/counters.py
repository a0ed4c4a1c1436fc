"""Node-wide counters: plain integers bumped on the hot path, read by the exporter at scrape time.

Theory of operation: the publish/deliver path must not pay for observability, so it never calls
into prometheus-client. It does `counters.published += 1` on an object with `__slots__` (one
attribute load and one store), and `node.metrics.collector` turns these integers into Prometheus
families only when someone scrapes. Gauges (connections, queue depths) are not counted at all:
the collector reads them from the broker's own structures at scrape time.

Names mirror RabbitMQ's Prometheus plugin (`rabbitmq_channel_messages_published_total` is
`published`, ...). Everything here is touched only by the event-loop thread, except the store's
commit figures, which its writer thread updates and the loop only reads.
"""

from __future__ import annotations

import asyncio
import time

# Upper bounds (seconds) of the latency histograms; the last bucket is +Inf.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Histogram:
    """A fixed-bucket histogram in plain numbers (cumulative counts are made at export)."""

    __slots__ = ("bounds", "counts", "sum", "count")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        i = 0
        bounds = self.bounds
        n = len(bounds)
        while i < n and value > bounds[i]:
            i += 1
        self.counts[i] += 1
        self.sum += value
        self.count += 1

    def buckets(self) -> list[tuple[str, int]]:
        """Cumulative (le, count) pairs as Prometheus wants them."""
        out = []
        total = 0
        for bound, c in zip(self.bounds, self.counts, strict=False):
            total += c
            out.append((repr(float(bound)), total))
        out.append(("+Inf", total + self.counts[-1]))
        return out


class NodeCounters:
    __slots__ = (
        # channels (RabbitMQ: rabbitmq_channel_*_total)
        "published",
        "confirmed",
        "unroutable_dropped",
        "unroutable_returned",
        "delivered_ack",
        "delivered_autoack",
        "redelivered",
        "acked",
        "get_ack",
        "get_autoack",
        "get_empty",
        # connections and channels opened (closed = opened - open now)
        "connections_opened",
        "channels_opened",
        # metadata proposals (Raft commit latency as the proposer sees it)
        "proposals",
        "proposal_failures",
        "propose_latency",
        "started_at",
    )

    def __init__(self) -> None:
        for name in self.__slots__:
            setattr(self, name, 0)
        self.propose_latency = Histogram()
        self.started_at = time.time()

    def time_proposal(self, fut: asyncio.Future) -> None:
        """Observe how long a metadata command takes from propose to applied (off the hot path)."""
        self.proposals += 1
        start = time.perf_counter()

        def done(f: asyncio.Future) -> None:
            self.propose_latency.observe(time.perf_counter() - start)
            if f.cancelled() or f.exception() is not None:
                self.proposal_failures += 1

        fut.add_done_callback(done)
