"""Message rates with history, as RabbitMQ's management plugin in `rates_mode basic`.

Theory of operation. Nothing here runs per message: the publish and deliver paths already bump
plain integers (`node.metrics.counters.NodeCounters`, and each `LocalQueue`'s sequence number,
which grows by one per message the queue takes). A timer samples those integers every
`interval` seconds (RabbitMQ's `collect_statistics_interval`, 5 s) into fixed-length rings of
(timestamp, values); the API turns a ring into RabbitMQ's `*_details` objects when asked:

- without `msg_rates_age`: `{"rate": r}`, r the change per second over the last interval;
- with `msg_rates_age=A&msg_rates_incr=I`: also `samples` (one per I seconds over the last A
  seconds, newest first, each the value at that time, as RabbitMQ lists them), `avg_rate` (the
  change per second over the window) and `avg` (the mean of the samples).

Rings: one for the node's counters and queue totals, one per queue this node leads. With 10,000
mostly idle queues a ring each would cost megabytes for nothing, so a queue gets a ring only once
it has something to show (messages, or a message taken since it was first seen) and loses it
after a whole window with nothing; an idle queue's rates are zero and its samples flat, which the
API says without a ring. Queues led by another node are sampled there: a node shows only its own
queues' history (their depth is still answered by the leader, as before).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any

INTERVAL = 5.0  # seconds between samples (RabbitMQ's collect_statistics_interval)
KEEP = 121  # samples per ring: RabbitMQ's basic retention keeps 605 s at 5 s
log = logging.getLogger(__name__)

MAX_SAMPLES = 600  # the most samples one *_details may list (a bound on the answer's size)

# The node's counters, in ring order: (message_stats key, NodeCounters attribute or a function).
NODE_COUNTERS: tuple[tuple[str, Callable[[Any], int]], ...] = (
    ("publish", lambda c: c.published),
    ("confirm", lambda c: c.confirmed),
    ("deliver", lambda c: c.delivered_ack),
    ("deliver_no_ack", lambda c: c.delivered_autoack),
    ("get", lambda c: c.get_ack),
    ("get_no_ack", lambda c: c.get_autoack),
    ("get_empty", lambda c: c.get_empty),
    (
        "deliver_get",
        lambda c: c.delivered_ack + c.delivered_autoack + c.get_ack + c.get_autoack,
    ),
    ("redeliver", lambda c: c.redelivered),
    ("ack", lambda c: c.acked),
    ("return_unroutable", lambda c: c.unroutable_returned),
    ("drop_unroutable", lambda c: c.unroutable_dropped),
)
NODE_GAUGES = ("messages", "messages_ready", "messages_unacknowledged")


def node_counter_values(counters: Any, led_depth: tuple[int, int] = (0, 0)) -> dict[str, int]:
    """What a node's Ping answer tells its peers: its counters (by NODE_COUNTERS key) and the
    depth of the queues it leads (messages_ready, messages_unacknowledged)."""
    out = {key: f(counters) for key, f in NODE_COUNTERS}
    out["messages_ready"], out["messages_unacknowledged"] = led_depth
    return out


NODE_KEYS = tuple(k for k, _ in NODE_COUNTERS) + NODE_GAUGES
# A queue's ring: the messages it took (its sequence number) and its depth.
QUEUE_KEYS = ("publish", "messages", "messages_ready", "messages_unacknowledged")


class RatesQuery:
    """`msg_rates_age` / `msg_rates_incr` of a request (seconds); age 0: the rate alone."""

    __slots__ = ("age", "incr")

    def __init__(self, age: float = 0.0, incr: float = 0.0) -> None:
        self.age = age
        self.incr = incr

    @classmethod
    def parse(cls, query: Any) -> RatesQuery:
        """From a request's query string; raises ValueError with the reason."""
        age_s, incr_s = query.get("msg_rates_age"), query.get("msg_rates_incr")
        if age_s is None:
            return cls()
        try:
            age = float(age_s)
            incr = float(incr_s) if incr_s is not None else INTERVAL
        except ValueError:
            raise ValueError("msg_rates_age and msg_rates_incr must be numbers of seconds")
        if age < 0 or incr <= 0:
            raise ValueError("msg_rates_age must be >= 0 and msg_rates_incr > 0")
        if age / incr > MAX_SAMPLES:
            raise ValueError(f"msg_rates_age / msg_rates_incr must be at most {MAX_SAMPLES}")
        return cls(age, incr)


class Ring:
    """The last `keep` samples (timestamp in seconds, values), oldest first."""

    __slots__ = ("samples",)

    def __init__(self, keep: int = KEEP) -> None:
        self.samples: deque[tuple[float, tuple[int, ...]]] = deque(maxlen=keep)

    def add(self, ts: float, values: tuple[int, ...]) -> None:
        self.samples.append((ts, values))

    def idle(self) -> bool:
        """Every sample the same, with nothing in the queue: nothing to show."""
        if len(self.samples) < (self.samples.maxlen or 0):
            return False
        first = self.samples[0][1]
        return first[1:] == (0,) * (len(first) - 1) and all(v == first for _, v in self.samples)

    def details(self, i: int, q: RatesQuery, now: float) -> dict[str, Any]:
        """RabbitMQ's `<key>_details` of the i-th value."""
        s = self.samples
        if len(s) < 2:
            rate = 0.0
        else:
            (t0, v0), (t1, v1) = s[-2], s[-1]
            rate = _per_second(v1[i] - v0[i], t1 - t0)
        out: dict[str, Any] = {"rate": rate}
        if not q.age:
            return out
        points = self._points(i, q, now)
        out["samples"] = [{"sample": v, "timestamp": int(t * 1000)} for t, v in points]
        if len(points) >= 2:
            (tn, vn), (t0, v0) = points[0], points[-1]
            out["avg_rate"] = _per_second(vn - v0, tn - t0)
        else:
            out["avg_rate"] = 0.0
        out["avg"] = round(sum(v for _, v in points) / len(points), 2) if points else 0.0
        return out

    def _points(self, i: int, q: RatesQuery, now: float) -> list[tuple[float, int]]:
        """One value every `incr` seconds over the last `age`, newest first: each the latest
        sample at or before that time (RabbitMQ's: a counter holds its value between samples).
        Times before the first sample are left out, as a node that just started has none."""
        s = self.samples
        if not s:
            return []
        end = now - (now % q.incr)  # aligned, so that successive polls line up
        out: list[tuple[float, int]] = []
        j = len(s) - 1
        t = end
        while t >= end - q.age:
            while j >= 0 and s[j][0] > t:
                j -= 1
            if j < 0:
                break
            out.append((t, s[j][1][i]))
            t -= q.incr
        return out


def _per_second(delta: int, seconds: float) -> float:
    return round(delta / seconds, 2) if seconds > 0 else 0.0


class _QueueTrack:
    """What the sampler knows of one queue: its handle and sequence number at the last sample
    (a new handle, e.g. a quorum queue's new epoch, numbers its messages anew), the messages it
    took since the node first saw it, and its ring if it has one."""

    __slots__ = ("handle", "seq", "published", "ring")

    def __init__(self, handle: Any, seq: int) -> None:
        self.handle = handle
        self.seq = seq
        self.published = 0
        self.ring: Ring | None = None


class RateHistory:
    """The node's rings; `sample()` runs on a timer once `start()` was called."""

    def __init__(
        self,
        node: Any,
        interval: float = INTERVAL,
        keep: int = KEEP,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.node = node
        self.interval = interval
        self.keep = keep
        self.clock = clock
        self.node_ring = Ring(keep)
        # The whole cluster: this node's counters plus every peer's (from the forwarding Pings,
        # each accumulated so that a peer's restart never counts backwards), and this node's
        # view of the queue totals (which counts every queue, wherever it is led).
        self.cluster_ring = Ring(keep)
        self.peer_rings: dict[str, Ring] = {}
        self._peer_last: dict[str, tuple[int, ...]] = {}
        self._peer_total: dict[str, tuple[int, ...]] = {}
        self._peer_depth: dict[str, tuple[int, int]] = {}
        self.queues: dict[tuple[str, str], _QueueTrack] = {}
        self._task: asyncio.Task[None] | None = None

    # -- sampling (on the timer, never per message) ------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self.sample()
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                self.sample()
            except Exception:  # one bad sample must not end the sampling
                log.exception("rate sample failed")

    def sample(self) -> None:
        broker = self.node.broker
        if broker is None:
            return
        now = self.clock()
        # The depth of the queues this node leads: the peers hear it on the Ping and add it up
        # for the cluster (a remote handle's figures here are only a hint, as of its last stats).
        ready = unacked = 0
        seen: set[tuple[str, str]] = set()
        for vhost, handles in broker.queues.items():
            for name, q in handles.items():
                stats_now = getattr(q, "stats_now", None)
                if stats_now is None:
                    continue  # led by another node, which samples it
                r = stats_now()[0]
                u = q.unacked
                ready += r
                unacked += u
                key = (vhost, name)
                seen.add(key)
                self._sample_queue(key, q, now, r, u)
        for key in [k for k in self.queues if k not in seen]:
            del self.queues[key]  # deleted, or now led elsewhere
        broker.led_depth = (ready, unacked)
        counters = broker.counters
        local = tuple(f(counters) for _, f in NODE_COUNTERS)
        self.node_ring.add(now, local + (ready + unacked, ready, unacked))
        self._sample_peers(now)
        cluster = list(local)
        for total in self._peer_total.values():
            cluster = [a + b for a, b in zip(cluster, total, strict=True)]
        for peer_ready, peer_unacked in self._peer_depth.values():
            ready += peer_ready
            unacked += peer_unacked
        self.cluster_ring.add(now, tuple(cluster) + (ready + unacked, ready, unacked))

    def _sample_peers(self, now: float) -> None:
        peers = _peers(self.node)
        for name in [n for n in self.peer_rings if n not in peers]:
            del self.peer_rings[name]  # removed from the cluster; its counts stay in the total
        self._peer_depth = {}
        for name, peer in peers.items():
            got = getattr(peer, "message_counters", None) or {}
            if not got:
                continue  # not heard from yet, or a node that predates the field
            if getattr(peer, "state", "up") == "up":
                # A node that is down has no queues to count (they wait for it, or moved).
                self._peer_depth[name] = (
                    int(got.get("messages_ready", 0)),
                    int(got.get("messages_unacknowledged", 0)),
                )
            new = tuple(int(got.get(key, 0)) for key, _ in NODE_COUNTERS)
            last = self._peer_last.get(name)
            total = self._peer_total.get(name, (0,) * len(new))
            if last is None:
                total = new  # first heard: its counts so far
            else:
                # A restarted peer counts from zero again: what it counted since is new.
                total = tuple(
                    t + (n - p if n >= p else n) for t, n, p in zip(total, new, last, strict=True)
                )
            self._peer_last[name], self._peer_total[name] = new, total
            ring = self.peer_rings.get(name)
            if ring is None:
                ring = self.peer_rings[name] = Ring(self.keep)
            ring.add(now, total)

    def _sample_queue(
        self, key: tuple[str, str], q: Any, now: float, ready: int, unacked: int
    ) -> None:
        seq = q.last_seq
        track = self.queues.get(key)
        taken = 0
        if track is None:
            track = self.queues[key] = _QueueTrack(q, seq)
        elif track.handle is not q or seq < track.seq:
            track.handle, track.seq = q, seq  # numbered anew: count on from here
        else:
            taken = seq - track.seq
            track.published += taken
            track.seq = seq
        if track.ring is None:
            if not (taken or ready or unacked):
                return
            track.ring = Ring(self.keep)
            if taken:
                # The sample before, when it was idle: so the first interval has its rate.
                track.ring.add(now - self.interval, (track.published - taken, 0, 0, 0))
        track.ring.add(now, (track.published, ready + unacked, ready, unacked))
        if track.ring.idle():
            track.ring = None  # a whole window with nothing: answered without a ring

    # -- the API's view ----------------------------------------------------------------------

    def queue_rate(self, vhost: str, name: str, i: int = 0) -> float:
        """The current rate of a queue's i-th ring value (QUEUE_KEYS), for sorting a list."""
        track = self.queues.get((vhost, name))
        if track is None or track.ring is None:
            return 0.0
        return float(track.ring.details(i, RatesQuery(), 0.0)["rate"])

    def peer_counts(self) -> dict[str, int]:
        """The other nodes' counters added up, as their last Ping answers gave them."""
        out = dict.fromkeys((key for key, _ in NODE_COUNTERS), 0)
        for total in self._peer_total.values():
            for i, (key, _) in enumerate(NODE_COUNTERS):
                out[key] += total[i]
        return out

    def peer_details(self, name: str, q: RatesQuery) -> dict[str, Any] | None:
        """A peer's message_stats (counts and `*_details`) from its Pings; None if unheard."""
        ring = self.peer_rings.get(name)
        if ring is None or not ring.samples:
            return None
        now = self.clock()
        last = ring.samples[-1][1]
        out: dict[str, Any] = {}
        for i, (key, _) in enumerate(NODE_COUNTERS):
            out[key] = last[i]
            out[f"{key}_details"] = ring.details(i, q, now)
        return out

    def node_details(
        self, q: RatesQuery, cluster: bool = False
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """(message_stats `*_details`, queue_totals `*_details`) of this node, or with `cluster`
        of the whole cluster."""
        now = self.clock()
        ring = self.cluster_ring if cluster else self.node_ring
        stats = {
            f"{key}_details": ring.details(i, q, now) for i, (key, _) in enumerate(NODE_COUNTERS)
        }
        base = len(NODE_COUNTERS)
        totals = {
            f"{key}_details": ring.details(base + i, q, now) for i, key in enumerate(NODE_GAUGES)
        }
        return stats, totals

    def queue_details(
        self, vhost: str, name: str, q: RatesQuery, counts: Sequence[int] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """(message_stats, depth `*_details`) of a queue this node leads; a queue without a ring
        (idle, or led elsewhere) gets zero rates and flat samples of `counts` (its current
        messages, ready, unacked) where given."""
        track = self.queues.get((vhost, name))
        ring = track.ring if track is not None else None
        published = track.published if track is not None else 0
        if ring is None and not q.age:  # the common case of a long list: no ring to build
            zero = {"rate": 0.0}
            return (
                {"publish": published, "publish_details": dict(zero)},
                {f"{key}_details": dict(zero) for key in QUEUE_KEYS[1:]},
            )
        if ring is None:
            ring = _flat_ring(self.node_ring, published, counts or (0, 0, 0))
        now = self.clock()
        stats = {"publish": published, "publish_details": ring.details(0, q, now)}
        depth = {
            f"{key}_details": ring.details(1 + i, q, now) for i, key in enumerate(QUEUE_KEYS[1:])
        }
        return stats, depth


def _flat_ring(clock_ring: Ring, published: int, counts: Iterable[int]) -> Ring:
    """A ring with the node ring's timestamps and constant values: an idle queue's history."""
    values = (published, *counts)
    ring = Ring(clock_ring.samples.maxlen or KEEP)
    for ts, _ in clock_ring.samples:
        ring.add(ts, values)
    return ring


def _peers(node: Any) -> dict[str, Any]:
    """The forwarding peers (cluster.forwarding.client.Peer) by node id; none on a lone node."""
    forwarding = getattr(getattr(node, "cluster", None), "forwarding", None)
    peers = getattr(forwarding, "peers", None)
    return dict(peers) if isinstance(peers, dict) else {}
