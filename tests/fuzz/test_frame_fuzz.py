"""Fuzzing the AMQP 0-9-1 front end: the sans-I/O parsers with hypothesis, then a live node with
random and mutated frames while a well-behaved client publishes with confirms next to them.

What must hold:
- FrameReader raises nothing but FrameError, whatever the bytes; how the bytes are split into
  reads never changes the events.
- Field tables round-trip; decode_table/decode_method raise only their own errors on any bytes.
- A node under a storm of malformed connections stays up, logs no traceback, and every message it
  confirmed to a bystander publisher is delivered exactly once.
"""

from __future__ import annotations

import collections
import random
import socket
import struct
import threading
import time
from decimal import Decimal

import pika
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from merpati.node.amqp091 import spec
from merpati.node.amqp091.frames import FrameError, FrameReader
from merpati.node.amqp091.render import method_frame
from merpati.node.wire.table import (
    ByteArray,
    DecodeError,
    Int,
    Timestamp,
    decode_table,
    encode_shortstr,
    encode_table,
)

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------------------------------------
# (a) FrameReader
# ---------------------------------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple] = []

    def on_method(self, channel, payload):
        self.events.append(("method", channel, bytes(payload)))

    def on_publish(
        self, channel, exchange, routing_key, mandatory, immediate, route_raw, props_raw, body
    ):
        self.events.append(
            (
                "publish",
                channel,
                exchange,
                routing_key,
                mandatory,
                immediate,
                bytes(route_raw),
                bytes(props_raw),
                bytes(body),
            )
        )

    def on_heartbeat(self):
        self.events.append(("heartbeat",))


def _frame(ftype: int, channel: int, payload: bytes) -> bytes:
    return struct.pack(">BHI", ftype, channel, len(payload)) + payload + b"\xce"


def _feed_all(reader: FrameReader, chunks: list[bytes]) -> FrameError | None:
    """Feed chunks until the first FrameError (returned); anything else propagates and fails."""
    for chunk in chunks:
        try:
            reader.feed(chunk)
        except FrameError as e:
            assert isinstance(e.code, int) and 500 <= e.code < 600, (e.code, e.text)
            assert e.text
            return e
    return None


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts}) if data else []
    out, prev = [], 0
    for p in points:
        out.append(data[prev:p])
        prev = p
    out.append(data[prev:])
    return out


frame_maxes = st.sampled_from([4096, 8192, 131072])


@FUZZ
@given(
    data=st.binary(max_size=3000),
    cuts=st.lists(st.integers(0, 5000), max_size=20),
    frame_max=frame_maxes,
)
def test_reader_arbitrary_bytes_raise_only_frame_error(data, cuts, frame_max):
    reader = FrameReader(Recorder(), frame_max)
    _feed_all(reader, _split(data, cuts))


# Byte soup biased towards things that look like frames: valid envelopes around random payloads.
_frame_like = st.builds(
    lambda t, ch, payload, end: struct.pack(">BHI", t, ch, len(payload)) + payload + end,
    st.sampled_from([1, 2, 3, 8, 0, 4, 0xCE]),
    st.sampled_from([0, 1, 2, 65535]),
    st.one_of(
        st.binary(max_size=64),
        st.builds(lambda tail: b"\x00\x3c\x00\x28" + tail, st.binary(max_size=40)),  # publish-ish
        st.builds(
            lambda tail: struct.pack(">HHQ", 60, 0, len(tail)) + tail, st.binary(max_size=20)
        ),  # header-ish
    ),
    st.sampled_from([b"\xce", b"\xce", b"\xce", b"\x00"]),
)


@FUZZ
@given(frames=st.lists(_frame_like, max_size=30), cuts=st.lists(st.integers(0, 5000), max_size=10))
def test_reader_frame_shaped_garbage_raises_only_frame_error(frames, cuts):
    reader = FrameReader(Recorder(), 4096)
    _feed_all(reader, _split(b"".join(frames), cuts))


# -- valid streams ----------------------------------------------------------------------------

_shortstr = st.text(max_size=20).filter(lambda s: len(s.encode()) <= 255)

_control_methods = st.one_of(
    st.builds(
        lambda q, d: spec.BY_NAME["queue.declare"](queue=q, durable=d), _shortstr, st.booleans()
    ),
    st.builds(lambda n: spec.BY_NAME["basic.qos"](prefetch_count=n), st.integers(0, 65535)),
    st.builds(
        lambda t, m: spec.BY_NAME["basic.ack"](delivery_tag=t, multiple=m),
        st.integers(0, 2**64 - 1),
        st.booleans(),
    ),
    st.just(spec.BY_NAME["channel.open"]()),
    st.just(spec.BY_NAME["confirm.select"]()),
)


@st.composite
def _publish_frames(draw, channel: int, frame_max: int) -> list[bytes]:
    exchange = draw(_shortstr)
    rk = draw(_shortstr)
    m = spec.BY_NAME["basic.publish"](
        exchange=exchange,
        routing_key=rk,
        mandatory=draw(st.booleans()),
        immediate=draw(st.booleans()),
    )
    body = draw(st.binary(max_size=3 * frame_max) | st.just(b""))
    props = draw(st.sampled_from([b"\x00\x00", b"\x10\x00\x01", b"\x80\x00\x0atext/plain"]))
    frames = [
        method_frame(channel, m),
        _frame(2, channel, struct.pack(">HHQ", 60, 0, len(body)) + props),
    ]
    chunk = draw(st.integers(1, frame_max - 8))
    for i in range(0, len(body), chunk):
        frames.append(_frame(3, channel, body[i : i + chunk]))
    return frames


@st.composite
def valid_streams(draw) -> tuple[int, bytes, int]:
    frame_max = draw(st.sampled_from([4096, 8192]))
    per_channel: dict[int, list[bytes]] = collections.defaultdict(list)
    publishes = 0
    for _ in range(draw(st.integers(0, 12))):
        kind = draw(st.sampled_from(["method", "publish", "publish", "heartbeat"]))
        if kind == "heartbeat":
            per_channel[0].append(_frame(8, 0, b""))
            continue
        channel = draw(st.integers(1, 3))
        if kind == "method":
            per_channel[channel].append(method_frame(channel, draw(_control_methods)))
        else:
            # A publish's frames stay contiguous on their channel; other channels may interleave.
            per_channel[channel].extend(draw(_publish_frames(channel, frame_max)))
            publishes += 1
    # Interleave the channels' frame sequences, keeping each channel's own order.
    queues = {ch: list(fs) for ch, fs in per_channel.items() if fs}
    out: list[bytes] = []
    while queues:
        ch = draw(st.sampled_from(sorted(queues)))
        out.append(queues[ch].pop(0))
        if not queues[ch]:
            del queues[ch]
    return frame_max, b"".join(out), publishes


@FUZZ
@given(stream=valid_streams(), cuts=st.lists(st.integers(0, 100000), max_size=40))
def test_reader_splits_do_not_change_events(stream, cuts):
    frame_max, data, publishes = stream
    whole = Recorder()
    assert _feed_all(FrameReader(whole, frame_max), [data]) is None
    assert sum(1 for e in whole.events if e[0] == "publish") == publishes

    split = Recorder()
    assert _feed_all(FrameReader(split, frame_max), _split(data, cuts)) is None
    assert split.events == whole.events


@FUZZ
@given(stream=valid_streams())
def test_reader_byte_at_a_time_gives_the_same_events(stream):
    frame_max, data, _ = stream
    assume(len(data) < 20000)
    whole = Recorder()
    FrameReader(whole, frame_max).feed(data)
    one = Recorder()
    reader = FrameReader(one, frame_max)
    for i in range(len(data)):
        reader.feed(data[i : i + 1])
    assert one.events == whole.events


@FUZZ
@given(
    stream=valid_streams(),
    pos=st.integers(0, 10**6),
    byte=st.integers(0, 255),
    cuts=st.lists(st.integers(0, 100000), max_size=10),
)
def test_reader_mutated_valid_stream_raises_only_frame_error(stream, pos, byte, cuts):
    frame_max, data, _ = stream
    assume(data)
    i = pos % len(data)
    mutated = data[:i] + bytes([byte]) + data[i + 1 :]
    _feed_all(FrameReader(Recorder(), frame_max), _split(mutated, cuts))
    # Truncation anywhere is never an error by itself (the reader just waits for more).
    assert _feed_all(FrameReader(Recorder(), frame_max), [data[:i]]) is None


# ---------------------------------------------------------------------------------------------
# (b) field tables
# ---------------------------------------------------------------------------------------------

_keys = st.text(max_size=30).filter(lambda s: len(s.encode()) <= 255)
_decimals = st.builds(
    lambda raw, scale: Decimal(raw).scaleb(-scale),
    st.integers(-(2**31), 2**31 - 1),
    st.integers(0, 9),
)
_scalars = st.one_of(
    st.text(max_size=50),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False),
    st.none(),
    st.builds(Timestamp, st.integers(0, 2**64 - 1)),
    st.builds(ByteArray, st.binary(max_size=50)),
    _decimals,
    st.builds(lambda v: Int("b", v), st.integers(-128, 127)),
    st.builds(lambda v: Int("B", v), st.integers(0, 255)),
    st.builds(lambda v: Int("s", v), st.integers(-(2**15), 2**15 - 1)),
    st.builds(lambda v: Int("u", v), st.integers(0, 2**16 - 1)),
    st.builds(lambda v: Int("i", v), st.integers(0, 2**32 - 1)),
    st.builds(lambda v: Int("L", v), st.integers(0, 2**64 - 1)),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(_keys, inner, max_size=5)),
    max_leaves=30,
)
tables = st.dictionaries(_keys, _values, max_size=10)


def _same_types(a, b) -> bool:
    """Decoded values keep their Python type (and Int its wire letter), recursively."""
    if isinstance(a, dict):
        return (
            isinstance(b, dict) and a.keys() == b.keys() and all(_same_types(a[k], b[k]) for k in a)
        )
    if isinstance(a, (list, tuple)):
        return isinstance(b, list) and len(a) == len(b) and all(map(_same_types, a, b))
    if isinstance(a, Int):
        return isinstance(b, Int) and a.kind == b.kind
    return type(a) is type(b)


@FUZZ
@given(table=tables, prefix=st.binary(max_size=8))
def test_table_round_trip(table, prefix):
    raw = encode_table(table)
    decoded, end = decode_table(prefix + raw + b"trailing", len(prefix))
    assert end == len(prefix) + len(raw)
    assert decoded == table
    assert _same_types(table, decoded)
    assert encode_table(decoded) == raw


@FUZZ
@given(data=st.binary(max_size=400), off=st.integers(0, 8))
def test_decode_table_arbitrary_bytes_raise_only_decode_error(data, off):
    try:
        table, end = decode_table(data, off)
    except DecodeError:
        return
    assert off + 4 <= end <= len(data)
    assert isinstance(table, dict)


@FUZZ
@given(table=tables, pos=st.integers(0, 10**6), byte=st.integers(0, 255))
def test_decode_table_mutated_tables_raise_only_decode_error(table, pos, byte):
    raw = bytearray(encode_table(table))
    raw[pos % len(raw)] = byte
    try:
        decode_table(bytes(raw), 0)
    except DecodeError:
        pass
    try:
        decode_table(bytes(raw[: pos % len(raw)]), 0)
    except DecodeError:
        pass


def test_deeply_nested_table_is_a_decode_error_not_a_recursion_error():
    # F-in-F 2000 deep: must stop at the depth limit with DecodeError.
    raw = encode_table({})
    for _ in range(2000):
        body = b"\x01kF" + raw
        raw = struct.pack(">I", len(body)) + body
    try:
        decode_table(raw, 0)
    except DecodeError:
        return
    raise AssertionError("a 2000-deep table decoded without error")


@FUZZ
@given(data=st.binary(max_size=200), ids=st.sampled_from(sorted(spec.BY_ID)))
def test_decode_method_raises_only_its_own_errors(data, ids):
    for payload in (data, struct.pack(">HH", *ids) + data):
        try:
            spec.decode_method(payload)
        except (DecodeError, spec.UnknownMethod):
            pass


# ---------------------------------------------------------------------------------------------
# (c) a live node under a storm of bad connections
# ---------------------------------------------------------------------------------------------

HEADER = b"AMQP\x00\x00\x09\x01"


def _good_frames(rng: random.Random) -> list[bytes]:
    """Valid frames a client could send on channel 1 once it is open."""
    body = rng.randbytes(rng.randint(0, 300))
    props = rng.choice(
        [
            b"\x00\x00",
            # content_type, headers, delivery_mode, user_id: mutations then hit the property decoder
            b"\xa8\x10"
            + encode_shortstr("text/plain")
            + encode_table({"k": "v", "n": 1})
            + b"\x02"
            + encode_shortstr("guest"),
            b"\x20\x00" + encode_table({"x-match": "all", "nested": {"a": [1, 2.5, None]}}),
        ]
    )
    publish = [
        method_frame(
            1,
            spec.BY_NAME["basic.publish"](
                exchange=rng.choice(["", "amq.topic", "amq.direct", "nope"]),
                routing_key=rng.choice(["fuzz", "a.b", ""]),
            ),
        ),
        _frame(2, 1, struct.pack(">HHQ", 60, 0, len(body)) + props),
        _frame(3, 1, body) if body else b"",
    ]
    others = [
        method_frame(
            1, spec.BY_NAME["queue.declare"](queue=f"fuzz-{rng.randint(0, 5)}", auto_delete=True)
        ),
        method_frame(1, spec.BY_NAME["basic.qos"](prefetch_count=rng.randint(0, 10))),
        method_frame(
            1,
            spec.BY_NAME["exchange.declare"](
                exchange=f"fx-{rng.randint(0, 3)}",
                type=rng.choice(["topic", "direct", "bogus"]),
                auto_delete=True,
                arguments={"k": rng.random()},
            ),
        ),
        method_frame(1, spec.BY_NAME["basic.get"](queue=f"fuzz-{rng.randint(0, 5)}", no_ack=True)),
        method_frame(1, spec.BY_NAME["confirm.select"]()),
        method_frame(
            1,
            spec.BY_NAME["basic.consume"](
                queue=f"fuzz-{rng.randint(0, 5)}", no_ack=rng.random() < 0.5
            ),
        ),
        _frame(8, 0, b""),
    ]
    return [b"".join(publish)] * 3 + others


def _split_frames(data: bytes) -> list[bytes]:
    out, off = [], 0
    while off + 7 <= len(data):
        size = struct.unpack_from(">I", data, off + 3)[0]
        out.append(data[off : off + 8 + size])
        off += 8 + size
    return out or [data]


def _mutate(rng: random.Random, data: bytes) -> bytes:
    """Mutate one frame of `data` (a run of valid frames)."""
    frames = _split_frames(data)
    k = rng.randrange(len(frames))
    f = bytearray(frames[k])
    op = rng.randrange(9)
    if op == 0 and f:  # flip bits
        for _ in range(rng.randint(1, 4)):
            f[rng.randrange(len(f))] ^= 1 << rng.randrange(8)
    elif op == 1 and f:  # truncate the byte stream
        del f[rng.randrange(len(f)) :]
        frames = frames[: k + 1]
    elif op == 2 and len(f) >= 7:  # oversize / undersize the length field
        struct.pack_into(
            ">I",
            f,
            3,
            rng.choice(
                [0, 1, 2**31 - 1, 2**32 - 1, 131073, (len(f) - 8 + rng.randint(-3, 3)) & 0xFFFFFFFF]
            ),
        )
    elif op == 3:  # insert random bytes
        i = rng.randrange(len(f) + 1)
        f[i:i] = rng.randbytes(rng.randint(1, 16))
    elif op == 4 and len(f) >= 3:  # random channel
        struct.pack_into(">H", f, 1, rng.choice([0, 2, 65535, rng.randrange(65536)]))
    elif op == 5 and f:  # random frame type
        f[0] = rng.randrange(256)
    elif op == 6 and len(f) >= 11:  # random method ids
        struct.pack_into(">HH", f, 7, rng.randrange(100), rng.randrange(200))
    elif op == 7 and len(f) > 8:  # cut the payload but keep the envelope valid
        payload = bytes(f[7:-1])
        payload = payload[: rng.randrange(len(payload) + 1)]
        f = bytearray(
            struct.pack(">BHI", f[0], (f[1] << 8) | f[2], len(payload)) + payload + b"\xce"
        )
    elif op == 8 and len(f) > 8:  # corrupt the payload but keep the envelope valid
        i = 7 + rng.randrange(len(f) - 8)
        f[i] = rng.randrange(256)
    frames[k] = bytes(f)
    return b"".join(frames)


def _fuzz_connection(port: int, rng: random.Random, stats: collections.Counter) -> None:
    s = socket.create_connection(("127.0.0.1", port), timeout=2)
    s.settimeout(0.01)

    def drain(wait: float = 0.0) -> bytes:
        got = b""
        deadline = time.monotonic() + wait
        while True:
            try:
                chunk = s.recv(65536)
            except (TimeoutError, BlockingIOError):
                if time.monotonic() >= deadline:
                    return got
                continue
            if not chunk:
                raise EOFError
            got += chunk

    try:
        mode = rng.choice([0, 1, 2, 3, 3, 3, 3, 3])
        if mode == 0:  # no handshake at all: random bytes, maybe after a header
            s.sendall((HEADER if rng.random() < 0.5 else b"") + rng.randbytes(rng.randint(0, 400)))
            drain(0.05)
            stats["raw"] += 1
            return
        start_ok = method_frame(
            0,
            spec.BY_NAME["connection.start-ok"](
                client_properties={"capabilities": {"authentication_failure_close": True}},
                mechanism="PLAIN",
                response=b"\x00guest\x00guest",
                locale="en_US",
            ),
        )
        if mode == 1:  # a broken protocol header
            s.sendall(_mutate(rng, HEADER) + start_ok)
            drain(0.05)
            stats["header"] += 1
            return
        if mode == 2:  # break the handshake itself
            s.sendall(HEADER + _mutate(rng, start_ok))
            drain(0.05)
            stats["handshake"] += 1
            return
        # The whole handshake pipelined in one write, then a burst of good and mutated frames.
        s.sendall(
            HEADER
            + start_ok
            + method_frame(
                0, spec.BY_NAME["connection.tune-ok"](channel_max=16, frame_max=131072, heartbeat=0)
            )
            + method_frame(0, spec.BY_NAME["connection.open"](virtual_host="/"))
            + method_frame(1, spec.BY_NAME["channel.open"]())
        )
        good = _good_frames(rng)
        for _ in range(rng.randint(1, 40)):
            f = rng.choice(good)
            s.sendall(f if rng.random() < 0.3 else _mutate(rng, f))
            stats["frames"] += 1
            drain()
        drain(0.05)
        stats["session"] += 1
    except (EOFError, ConnectionError, OSError):
        stats["closed-by-server"] += 1
    finally:
        s.close()


def test_live_node_survives_fuzzing_and_loses_no_confirmed_message(make_node):
    node = make_node()
    n_messages = 2000
    queue = "fuzz-bystander"
    seed = random.randrange(2**32)
    stop = threading.Event()
    stats: collections.Counter = collections.Counter()
    errors: list[BaseException] = []

    def fuzzer(k: int) -> None:
        rng = random.Random(seed + k)
        try:
            while not stop.is_set():
                _fuzz_connection(node.port, rng, stats)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            errors.append(e)

    setup = pika.BlockingConnection(pika.URLParameters(node.url))
    setup.channel().queue_declare(queue, durable=True)
    setup.close()

    received: list[bytes] = []
    consumer_ready = threading.Event()
    consumer_done = threading.Event()

    def consume() -> None:
        try:
            conn = pika.BlockingConnection(pika.URLParameters(node.url))
            ch = conn.channel()
            ch.basic_qos(prefetch_count=200)

            def on_message(chx, method, _props, body):
                received.append(body)
                chx.basic_ack(method.delivery_tag)

            ch.basic_consume(queue, on_message)
            consumer_ready.set()
            while not consumer_done.is_set():
                conn.process_data_events(time_limit=0.2)
            conn.close()
        except BaseException as e:  # noqa: BLE001
            errors.append(e)
            consumer_ready.set()

    threads = [threading.Thread(target=fuzzer, args=(k,), daemon=True) for k in range(4)]
    consumer = threading.Thread(target=consume, daemon=True)
    consumer.start()
    assert consumer_ready.wait(10)
    for t in threads:
        t.start()

    confirmed: list[bytes] = []
    started = time.monotonic()
    pub = pika.BlockingConnection(pika.URLParameters(node.url))
    ch = pub.channel()
    ch.confirm_delivery()
    for i in range(n_messages):
        body = f"msg-{i:05d}".encode()
        try:
            ch.basic_publish("", queue, body, pika.BasicProperties(delivery_mode=2), mandatory=True)
        except (pika.exceptions.NackError, pika.exceptions.UnroutableError):
            continue
        confirmed.append(body)
    pub.close()
    # Keep fuzzing for at least a few seconds in all.
    while time.monotonic() - started < 4:
        time.sleep(0.1)
    stop.set()
    for t in threads:
        t.join(15)

    deadline = time.monotonic() + 30
    while len(received) < len(confirmed) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.3)  # anything extra (a duplicate) would arrive now
    consumer_done.set()
    consumer.join(10)

    assert not errors, (seed, errors)
    assert node.alive(), (seed, node.log())
    assert stats["frames"] > 200, stats  # the storm really happened
    assert len(confirmed) == n_messages, (
        f"{n_messages - len(confirmed)} publishes were nacked or returned (seed {seed})"
    )
    counts = collections.Counter(received)
    dupes = {b: c for b, c in counts.items() if c > 1}
    assert not dupes, f"delivered more than once: {sorted(dupes)[:10]} (seed {seed})"
    missing = set(confirmed) - set(counts)
    assert not missing, (
        f"{len(missing)} confirmed messages never arrived, e.g. {sorted(missing)[:10]} (seed {seed})"
    )
    assert set(counts) <= set(confirmed)
    log = node.log()
    tb = log.find("Traceback")
    assert tb < 0, f"seed {seed}, stats {dict(stats)}:\n{log[max(0, tb - 300) : tb + 3000]}"
    assert "internal error" not in log, f"seed {seed}:\n{log[-5000:]}"

    # And it still serves a fresh client.
    c = pika.BlockingConnection(pika.URLParameters(node.url))
    c.channel().queue_declare(queue, passive=True)
    c.close()
