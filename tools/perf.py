"""`merpati perf`: a load tool in the spirit of RabbitMQ's PerfTest, for any AMQP 0-9-1 broker.

    merpati perf -x 1 -y 1 -z 10                    # 1 producer, 1 consumer, 10 seconds
    merpati perf -x 2 -y 4 -r 5000 -s 1024 -c 100 -q 200 -f --json

Producers and consumers each get their own connection, all in one process on one asyncio loop
(uvloop when installed). Publishing uses pre-encoded frames: basic.publish + content header + body
are built once, and per message only the 8-byte send timestamp at the head of the body changes, so
the tool is not the bottleneck in common runs. Consumers read that timestamp to measure latency
(publish to delivery; the clock is this process's, so there is no clock skew). With a confirm
window (-c) producers keep at most that many unconfirmed messages and confirm latency is measured
too. Consumers ack with `multiple` once per socket read (or every --multi-ack-every messages).

A live line per second (redrawn in place on a terminal, plain lines when piped) and a final
summary: average and median per-second rates, and latency percentiles. `--json` prints the
summary as JSON on stdout (live lines go to stderr then).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import statistics
import struct
import sys
import time
from collections import deque
from typing import Any
from urllib.parse import unquote, urlparse

from merpati.node.amqp091 import spec
from merpati.node.wire.properties import encode_properties

_frame_head = struct.Struct(">BHI")
_u64 = struct.Struct(">Q")
_pack_ts = struct.Struct(">Q").pack
FRAME_END = b"\xce"
DELIVER = (60, 60)
ACK = (60, 80)
NACK = (60, 120)
RETURN = (60, 50)


def _method_frame(channel: int, method: Any) -> bytes:
    payload = spec.encode_method(method)
    return _frame_head.pack(1, channel, len(payload)) + payload + FRAME_END


class Stats:
    """What happened in the current second and in the whole run (plain numbers)."""

    RESERVOIR = 200_000

    def __init__(self) -> None:
        self.sent = self.confirmed = self.nacked = self.returned = self.received = 0
        self.total_sent = self.total_confirmed = self.total_nacked = self.total_received = 0
        self.latencies: list[float] = []  # this second, seconds
        self.confirm_latencies: list[float] = []
        self.all_latencies: list[float] = []
        self.all_confirm: list[float] = []
        self._seen = 0
        self._seen_c = 0

    def _keep(self, store: list[float], value: float, seen: int) -> None:
        if len(store) < self.RESERVOIR:
            store.append(value)
        else:
            j = random.randrange(seen)
            if j < self.RESERVOIR:
                store[j] = value

    def latency(self, value: float) -> None:
        self.latencies.append(value)
        self._seen += 1
        self._keep(self.all_latencies, value, self._seen)

    def confirm_latency(self, value: float) -> None:
        self.confirm_latencies.append(value)
        self._seen_c += 1
        self._keep(self.all_confirm, value, self._seen_c)


def percentiles(values: list[float]) -> dict[str, float]:
    """min, median, 75th, 95th, 99th, max in milliseconds (empty: {})."""
    if not values:
        return {}
    s = sorted(values)
    n = len(s)

    def at(p: float) -> float:
        return round(s[min(n - 1, int(p * n))] * 1000, 3)

    return {
        "min": round(s[0] * 1000, 3),
        "median": at(0.5),
        "p75": at(0.75),
        "p95": at(0.95),
        "p99": at(0.99),
        "max": round(s[-1] * 1000, 3),
    }


class Client(asyncio.Protocol):
    """A minimal AMQP 0-9-1 client connection with one channel (number 1)."""

    def __init__(self, stats: Stats) -> None:
        self.stats = stats
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.replies: asyncio.Queue[Any] = asyncio.Queue()
        self.closed = self.loop.create_future()
        self.writable = asyncio.Event()
        self.writable.set()
        self.frame_max = 131072
        # consumer side
        self.no_ack = False
        self.multi_ack_every = 0
        self._content_left = 0
        self._pending_ts: bytes = b""
        self._last_tag = 0  # the delivery being read
        self._ack_tag = 0  # the last delivery read whole: what an ack covers
        self._unacked = 0
        self._returning = False  # the content being read is a basic.return, not a delivery
        # producer side
        self.unconfirmed: deque[tuple[int, int]] = deque()  # (seq, perf_counter_ns at send)
        self.confirm_space = asyncio.Event()
        self.confirm_space.set()
        self.confirm_window = 0

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(exc)
        self.writable.set()
        self.confirm_space.set()
        self.replies.put_nowait(ConnectionError(f"connection lost: {exc}"))

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        off = 0
        n = len(buf)
        stats = self.stats
        while n - off >= 8:
            ftype, channel, size = _frame_head.unpack_from(buf, off)
            end = off + 7 + size
            if end >= n:
                break
            start = off + 7
            if ftype == 3:  # body
                if self._content_left:
                    if self._pending_ts == b"" and size >= 8:
                        self._pending_ts = bytes(buf[start : start + 8])
                    self._content_left -= size
                    if self._content_left <= 0:
                        self._delivered()
            elif ftype == 2:  # content header: body size at offset 4
                (body_size,) = _u64.unpack_from(buf, start + 4)
                self._content_left = body_size
                self._pending_ts = b""
                if body_size == 0:
                    self._delivered()
            elif ftype == 1:
                cid, mid = struct.unpack_from(">HH", buf, start)
                if (cid, mid) == DELIVER:
                    ctl = buf[start + 4]
                    p = start + 5 + ctl
                    (self._last_tag,) = _u64.unpack_from(buf, p)
                    self._content_left = -1  # header follows
                elif (cid, mid) == ACK or (cid, mid) == NACK:
                    (tag,) = _u64.unpack_from(buf, start + 4)
                    multiple = buf[start + 12] & 1
                    self._confirmed(tag, bool(multiple), (cid, mid) == NACK)
                elif (cid, mid) == RETURN:
                    stats.returned += 1
                    self._returning = True
                    self._content_left = -1
                else:
                    self.replies.put_nowait(spec.decode_method(bytes(buf[start:end])))
            off = end + 1
        if off:
            del buf[:off]
        if not self.no_ack and self._unacked and not self.multi_ack_every:
            self._ack()

    # -- consumer side ------------------------------------------------------------------------

    def _delivered(self) -> None:
        self._content_left = 0
        if self._returning:
            self._returning = False
            return
        stats = self.stats
        stats.received += 1
        ts = self._pending_ts
        if len(ts) == 8:
            sent = _u64.unpack(ts)[0]
            if sent:
                stats.latency((time.perf_counter_ns() - sent) / 1e9)
        if not self.no_ack:
            self._ack_tag = self._last_tag
            self._unacked += 1
            if self.multi_ack_every and self._unacked >= self.multi_ack_every:
                self._ack()

    def _ack(self) -> None:
        self._unacked = 0
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(
                _frame_head.pack(1, 1, 13)
                + b"\x00\x3c\x00\x50"
                + _u64.pack(self._ack_tag)
                + b"\x01\xce"
            )

    # -- producer side ------------------------------------------------------------------------

    def _confirmed(self, tag: int, multiple: bool, nack: bool) -> None:
        stats = self.stats
        now = time.perf_counter_ns()
        unconfirmed = self.unconfirmed
        done = 0
        if multiple:
            while unconfirmed and unconfirmed[0][0] <= tag:
                _seq, sent = unconfirmed.popleft()
                stats.confirm_latency((now - sent) / 1e9)
                done += 1
        elif unconfirmed and unconfirmed[0][0] == tag:
            stats.confirm_latency((now - unconfirmed.popleft()[1]) / 1e9)
            done = 1
        else:
            for i, (seq, sent) in enumerate(unconfirmed):
                if seq == tag:
                    del unconfirmed[i]
                    stats.confirm_latency((now - sent) / 1e9)
                    done = 1
                    break
        if nack:
            stats.nacked += done
        else:
            stats.confirmed += done
        if len(unconfirmed) < self.confirm_window:
            self.confirm_space.set()

    # -- control ------------------------------------------------------------------------------

    def send_method(self, method: Any, channel: int = 1) -> None:
        assert self.transport is not None
        self.transport.write(_method_frame(channel, method))

    async def expect(self, name: str, timeout: float = 10.0) -> Any:
        while True:
            m = await asyncio.wait_for(self.replies.get(), timeout)
            if isinstance(m, Exception):
                raise m
            if name == m.NAME:
                return m
            if m.NAME in ("connection.close", "channel.close"):
                raise ConnectionError(f"{m.NAME}: {m.reply_code} {m.reply_text}")

    async def rpc(self, method: Any, reply: str, channel: int = 1) -> Any:
        self.send_method(method, channel)
        return await self.expect(reply)

    async def handshake(self, user: str, password: str, vhost: str) -> None:
        assert self.transport is not None
        self.transport.write(b"AMQP\x00\x00\x09\x01")
        await self.expect("connection.start")
        self.send_method(
            spec.ConnectionStartOk(
                client_properties={
                    "product": "merpati perf",
                    "capabilities": {"publisher_confirms": True, "basic.nack": True},
                },
                mechanism="PLAIN",
                response=f"\x00{user}\x00{password}".encode(),
                locale="en_US",
            ),
            0,
        )
        tune = await self.expect("connection.tune")
        self.frame_max = tune.frame_max or 131072
        self.send_method(
            spec.ConnectionTuneOk(
                channel_max=tune.channel_max, frame_max=self.frame_max, heartbeat=0
            ),
            0,
        )
        await self.rpc(spec.ConnectionOpen(virtual_host=vhost), "connection.open-ok", 0)
        await self.rpc(spec.ChannelOpen(), "channel.open-ok")

    async def close(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        try:
            self.send_method(spec.ConnectionClose(reply_code=200, reply_text="bye"), 0)
            await asyncio.wait_for(self.expect("connection.close-ok"), 3.0)
        except (TimeoutError, ConnectionError, OSError):
            pass
        self.transport.close()


async def connect(opts: argparse.Namespace, stats: Stats) -> Client:
    loop = asyncio.get_running_loop()
    _, client = await loop.create_connection(
        lambda: Client(stats),
        opts.host,
        opts.port,
        ssl=opts.ssl,
        server_hostname=opts.host if opts.ssl is not None else None,
    )
    await client.handshake(opts.user, opts.password, opts.vhost)
    return client


# -- producers and consumers ------------------------------------------------------------------


def publish_template(opts: argparse.Namespace, frame_max: int) -> tuple[bytes, bytes]:
    """(everything before the 8-byte timestamp, everything after it) of one published message."""
    size = max(opts.size, 8)
    props: dict[str, Any] = {}
    if opts.persistent:
        props["delivery_mode"] = 2
    props_raw = encode_properties(props)
    method = spec.encode_method(
        spec.BasicPublish(exchange=opts.exchange, routing_key=opts.routing_key or opts.queue)
    )
    head = _frame_head.pack(1, 1, len(method)) + method + FRAME_END
    header = struct.pack(">HHQ", 60, 0, size) + props_raw
    head += _frame_head.pack(2, 1, len(header)) + header + FRAME_END
    chunk = frame_max - 8
    if size > chunk:
        raise SystemExit(
            f"merpati perf: --size {size} is larger than one frame ({chunk}); use less"
        )
    head += _frame_head.pack(3, 1, size)
    return head, bytes(size - 8) + FRAME_END


async def producer(opts: argparse.Namespace, client: Client, stop: asyncio.Event) -> None:
    stats = client.stats
    if opts.confirm:
        await client.rpc(spec.ConfirmSelect(), "confirm.select-ok")
        client.confirm_window = opts.confirm
    head, tail = publish_template(opts, client.frame_max)
    transport = client.transport
    assert transport is not None
    rate = opts.rate
    batch_max = 200 if not rate else max(1, min(200, rate // 100))
    seq = 0
    started = time.monotonic()
    limit = opts.pmessages
    write = transport.write
    now_ns = time.perf_counter_ns
    unconfirmed = client.unconfirmed
    window = opts.confirm
    while not stop.is_set() and not transport.is_closing():
        if not client.writable.is_set():
            await client.writable.wait()
            continue
        n = batch_max
        if rate:
            allowed = int((time.monotonic() - started) * rate) - seq
            if allowed <= 0:
                await asyncio.sleep(min(0.01, 1 / rate))
                continue
            n = min(n, allowed)
        if window:
            room = window - len(unconfirmed)
            if room <= 0:
                client.confirm_space.clear()
                await client.confirm_space.wait()
                continue
            n = min(n, room)
        if limit:
            n = min(n, limit - seq)
            if n <= 0:
                break
        parts = []
        for _ in range(n):
            seq += 1
            t = now_ns()
            parts.append(head + _pack_ts(t) + tail)
            if window:
                unconfirmed.append((seq, t))
        write(b"".join(parts))
        stats.sent += n
        # Let the loop read acks and deliveries between batches.
        await asyncio.sleep(0)


async def consumer(opts: argparse.Namespace, client: Client) -> None:
    client.no_ack = opts.autoack
    client.multi_ack_every = opts.multi_ack_every
    if opts.prefetch:
        await client.rpc(spec.BasicQos(prefetch_count=opts.prefetch), "basic.qos-ok")
    await client.rpc(spec.BasicConsume(queue=opts.queue, no_ack=opts.autoack), "basic.consume-ok")


# -- reporting --------------------------------------------------------------------------------


class Reporter:
    def __init__(self, opts: argparse.Namespace, stats: Stats) -> None:
        self.opts = opts
        self.stats = stats
        self.out = sys.stderr if opts.json else sys.stdout
        self.tty = self.out.isatty() and not opts.json
        self.rows: list[dict[str, Any]] = []
        self.started = time.monotonic()
        self.last = self.started

    def tick(self, final: bool = False) -> None:
        s = self.stats
        now = time.monotonic()
        dt = max(now - self.last, 1e-6)
        if final and dt < 0.5:
            # A last sliver of a second: count it in the totals, not as a per-second row.
            s.total_sent += s.sent
            s.total_confirmed += s.confirmed
            s.total_nacked += s.nacked
            s.total_received += s.received
            s.sent = s.confirmed = s.nacked = s.returned = s.received = 0
            return
        self.last = now
        row = {
            "time": round(now - self.started, 3),
            "sent": s.sent / dt,
            "confirmed": s.confirmed / dt,
            "nacked": s.nacked / dt,
            "returned": s.returned / dt,
            "received": s.received / dt,
            "latency_ms": percentiles(s.latencies),
            "confirm_latency_ms": percentiles(s.confirm_latencies),
        }
        s.total_sent += s.sent
        s.total_confirmed += s.confirmed
        s.total_nacked += s.nacked
        s.total_received += s.received
        s.sent = s.confirmed = s.nacked = s.returned = s.received = 0
        s.latencies = []
        s.confirm_latencies = []
        self.rows.append(row)
        line = (
            f"time {row['time']:.1f}s, sent: {row['sent']:.0f} msg/s"
            + (f", confirmed: {row['confirmed']:.0f} msg/s" if self.opts.confirm else "")
            + (f", nacked: {row['nacked']:.0f} msg/s" if row["nacked"] else "")
            + f", received: {row['received']:.0f} msg/s"
        )
        lat = row["latency_ms"]
        if lat:
            line += (
                f", min/median/75th/95th/99th consumer latency: {lat['min']:.2f}/{lat['median']:.2f}/"
                f"{lat['p75']:.2f}/{lat['p95']:.2f}/{lat['p99']:.2f} ms"
            )
        if self.tty:
            self.out.write("\r\x1b[K" + line)
        else:
            self.out.write(line + "\n")
        self.out.flush()

    def summary(self) -> dict[str, Any]:
        s = self.stats
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rows = self.rows or [{"sent": 0, "received": 0, "confirmed": 0}]
        return {
            "duration_s": round(elapsed, 3),
            "producers": self.opts.producers,
            "consumers": self.opts.consumers,
            "size": self.opts.size,
            "sent": s.total_sent,
            "confirmed": s.total_confirmed,
            "nacked": s.total_nacked,
            "received": s.total_received,
            "send_rate_avg": round(s.total_sent / elapsed, 1),
            "receive_rate_avg": round(s.total_received / elapsed, 1),
            "send_rate_median": round(statistics.median(r["sent"] for r in rows), 1),
            "receive_rate_median": round(statistics.median(r["received"] for r in rows), 1),
            "confirm_rate_median": round(statistics.median(r["confirmed"] for r in rows), 1),
            "latency_ms": percentiles(s.all_latencies),
            "confirm_latency_ms": percentiles(s.all_confirm),
        }

    def print_summary(self, summary: dict[str, Any]) -> None:
        if self.tty:
            self.out.write("\n")
        if self.opts.json:
            print(json.dumps(summary, indent=2))
            return
        out = self.out
        out.write(f"test stopped after {summary['duration_s']:.1f}s\n")
        out.write(
            f"sending rate avg: {summary['send_rate_avg']:.0f} msg/s, median: {summary['send_rate_median']:.0f} msg/s\n"
        )
        out.write(
            f"receiving rate avg: {summary['receive_rate_avg']:.0f} msg/s, median: {summary['receive_rate_median']:.0f} msg/s\n"
        )
        if self.opts.confirm:
            out.write(
                f"confirmed: {summary['confirmed']}, nacked: {summary['nacked']}, "
                f"confirm rate median: {summary['confirm_rate_median']:.0f} msg/s\n"
            )
        for key, what in (
            ("latency_ms", "consumer latency"),
            ("confirm_latency_ms", "confirm latency"),
        ):
            p = summary[key]
            if p:
                out.write(
                    f"{what} min/median/75th/95th/99th/max: {p['min']:.2f}/{p['median']:.2f}/"
                    f"{p['p75']:.2f}/{p['p95']:.2f}/{p['p99']:.2f}/{p['max']:.2f} ms\n"
                )
        out.flush()


# -- the run ----------------------------------------------------------------------------------


async def run(opts: argparse.Namespace) -> dict[str, Any]:
    stats = Stats()
    control = await connect(opts, stats)
    created = False
    if not opts.no_declare:
        ok = await control.rpc(
            spec.QueueDeclare(queue=opts.queue, durable=opts.persistent), "queue.declare-ok"
        )
        created = ok.message_count == 0 and not opts.queue_given
    consumers = [await connect(opts, stats) for _ in range(opts.consumers)]
    for c in consumers:
        await consumer(opts, c)
    producers = [await connect(opts, stats) for _ in range(opts.producers)]
    stop = asyncio.Event()
    reporter = Reporter(opts, stats)
    tasks = [asyncio.create_task(producer(opts, p, stop)) for p in producers]

    async def report() -> None:
        while True:
            await asyncio.sleep(1.0)
            reporter.tick()

    reporting = asyncio.create_task(report())
    try:
        if opts.pmessages:  # until every producer has sent its messages (or the time is up)
            await asyncio.wait(tasks, timeout=opts.duration)
        else:  # for the duration, unless a producer fails first
            await asyncio.wait(
                [asyncio.create_task(asyncio.sleep(opts.duration)), *tasks],
                return_when=asyncio.FIRST_COMPLETED,
            )
        for t in tasks:
            if t.done() and not t.cancelled() and t.exception() is not None:
                raise t.exception()  # type: ignore[misc]
    finally:
        stop.set()
        # Give consumers a moment to take what is in flight, then stop reporting.
        if consumers:
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                if stats.total_received + stats.received >= stats.total_sent + stats.sent:
                    break
                await asyncio.sleep(0.05)
        reporting.cancel()
        reporter.tick(final=True)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for c in producers + consumers:
            await c.close()
        if created and not opts.keep_queue:
            try:
                await control.rpc(spec.QueueDelete(queue=opts.queue), "queue.delete-ok")
            except (ConnectionError, TimeoutError):
                pass
        await control.close()
    summary = reporter.summary()
    reporter.print_summary(summary)
    return summary


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="merpati perf",
        description="Load test an AMQP 0-9-1 broker (PerfTest-like).",
        conflict_handler="resolve",
    )
    p.add_argument(
        "--uri",
        "-h",
        default=os.environ.get("MERPATI_PERF_URI", "amqp://guest:guest@127.0.0.1:5672/%2F"),
        help="amqp://user:pass@host:port/vhost",
    )
    p.add_argument("--help", action="help", help="show this help and exit")
    p.add_argument("--producers", "-x", type=int, default=1)
    p.add_argument("--consumers", "-y", type=int, default=1)
    p.add_argument(
        "--rate", "-r", type=int, default=0, help="messages/s per producer, 0 = as fast as possible"
    )
    p.add_argument("--size", "-s", type=int, default=12, help="message body size in bytes (min 8)")
    p.add_argument(
        "--confirm",
        "-c",
        type=int,
        default=0,
        help="confirm window: max unconfirmed per producer (0 = no confirms)",
    )
    p.add_argument(
        "--qos",
        "--prefetch",
        "-q",
        dest="prefetch",
        type=int,
        default=0,
        help="consumer prefetch (0 = unlimited)",
    )
    p.add_argument("--autoack", "-a", action="store_true", help="consume without acks")
    p.add_argument(
        "--multi-ack-every",
        "-A",
        type=int,
        default=0,
        help="ack every N messages (default: once per read)",
    )
    p.add_argument(
        "--persistent", "-f", action="store_true", help="persistent messages, durable queue"
    )
    p.add_argument(
        "--time", "-z", dest="duration", type=float, default=10.0, help="run time in seconds"
    )
    p.add_argument(
        "--pmessages", "-C", type=int, default=0, help="messages per producer, then stop"
    )
    p.add_argument(
        "--queue",
        "-u",
        default=None,
        help="queue name (default: a fresh perf-test-* queue, deleted at the end)",
    )
    p.add_argument(
        "--exchange",
        "-e",
        default="",
        help="exchange to publish to (default: the default exchange)",
    )
    p.add_argument("--routing-key", "-k", default="", help="routing key (default: the queue name)")
    p.add_argument("--no-declare", action="store_true", help="do not declare the queue")
    p.add_argument("--keep-queue", action="store_true", help="do not delete the queue at the end")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    p.add_argument(
        "--cacert", help="amqps://: the CA file the node's certificate is checked against"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    opts = parser().parse_args(argv)
    url = urlparse(opts.uri)
    if url.scheme not in ("amqp", "amqps", ""):
        print(f"merpati perf: unsupported URI scheme {url.scheme!r}", file=sys.stderr)
        return 64
    opts.ssl = None
    if url.scheme == "amqps":
        import ssl

        opts.ssl = ssl.create_default_context(cafile=opts.cacert)
    opts.host = url.hostname or "127.0.0.1"
    opts.port = url.port or (5671 if opts.ssl is not None else 5672)
    opts.user = unquote(url.username or "guest")
    opts.password = unquote(url.password or "guest")
    opts.vhost = unquote(url.path[1:]) if len(url.path) > 1 else "/"
    opts.queue_given = opts.queue is not None
    if opts.queue is None:
        opts.queue = "perf-test-" + secrets.token_hex(4)
    try:
        import uvloop  # type: ignore[import-not-found]

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    try:
        runner(run(opts))
    except (ConnectionError, OSError, TimeoutError) as e:
        print(f"merpati perf: {type(e).__name__}: {e}", file=sys.stderr)
        return 69
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
