"""node.amqp091.frames.FrameReader: frames in, handler events out; malformed input raises FrameError."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from merpati.node.amqp091 import spec
from merpati.node.amqp091.frames import FrameError, FrameReader
from merpati.node.wire.properties import encode_properties
from merpati.node.wire.table import encode_shortstr

FRAME_MAX = 4096


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


def frame(ftype: int, channel: int, payload: bytes, end: int = 0xCE) -> bytes:
    return struct.pack(">BHI", ftype, channel, len(payload)) + payload + bytes((end,))


def method(channel: int, m) -> bytes:
    return frame(1, channel, spec.encode_method(m))


def publish(
    channel: int,
    exchange: str = "ex",
    routing_key: str = "rk",
    mandatory: bool = False,
    immediate: bool = False,
) -> bytes:
    return method(
        channel, spec.BY_NAME["basic.publish"](0, exchange, routing_key, mandatory, immediate)
    )


def header(
    channel: int, body_size: int, props_raw: bytes = b"\x00\x00", class_id: int = 60
) -> bytes:
    return frame(2, channel, struct.pack(">HHQ", class_id, 0, body_size) + props_raw)


def body(channel: int, data: bytes) -> bytes:
    return frame(3, channel, data)


HEARTBEAT = frame(8, 0, b"")


def message(
    channel: int, data: bytes, chunk: int = FRAME_MAX - 8, props_raw: bytes = b"\x00\x00", **kw
) -> list[bytes]:
    out = [publish(channel, **kw), header(channel, len(data), props_raw)]
    for i in range(0, len(data), chunk):
        out.append(body(channel, data[i : i + chunk]))
    return out


def run(*chunks: bytes, frame_max: int = FRAME_MAX, **kw) -> list[tuple]:
    rec = Recorder()
    reader = FrameReader(rec, frame_max, **kw)
    for c in chunks:
        reader.feed(c)
    return rec.events


def expected_publish(
    channel,
    data,
    exchange="ex",
    routing_key="rk",
    mandatory=False,
    immediate=False,
    props_raw=b"\x00\x00",
):
    route_raw = encode_shortstr(exchange) + encode_shortstr(routing_key)
    return (
        "publish",
        channel,
        exchange,
        routing_key,
        mandatory,
        immediate,
        route_raw,
        props_raw,
        data,
    )


# --- assembly --------------------------------------------------------------------------------


def test_single_frame_publish():
    props = encode_properties({"content_type": "text/plain", "delivery_mode": 2})
    events = run(b"".join(message(1, b"hello", props_raw=props, mandatory=True)))
    assert events == [expected_publish(1, b"hello", mandatory=True, props_raw=props)]


def test_publish_flags_and_names():
    events = run(b"".join(message(3, b"x", exchange="", routing_key="q.é", immediate=True)))
    assert events == [expected_publish(3, b"x", exchange="", routing_key="q.é", immediate=True)]


def test_multi_body_frame_publish():
    data = bytes(range(256)) * 40  # 10240 bytes, three body frames at 4088
    frames = message(1, data)
    assert len(frames) == 2 + 3
    assert run(b"".join(frames)) == [expected_publish(1, data)]


def test_body_in_many_small_frames():
    data = b"abcdefghij" * 5
    assert run(b"".join(message(1, data, chunk=3))) == [expected_publish(1, data)]


def test_zero_length_body_completes_on_the_header():
    events = run(publish(1) + header(1, 0))
    assert events == [expected_publish(1, b"")]


def test_empty_body_frames_do_not_complete_a_message():
    rec = Recorder()
    reader = FrameReader(rec, FRAME_MAX)
    reader.feed(publish(1) + header(1, 3) + body(1, b""))
    assert rec.events == [] and reader.pending_content(1)
    reader.feed(body(1, b"abc"))
    assert rec.events == [expected_publish(1, b"abc")]
    assert not reader.pending_content(1)


def test_other_methods_and_heartbeats_pass_through():
    qos = spec.encode_method(spec.BY_NAME["basic.qos"](0, 10, False))
    events = run(frame(1, 2, qos) + HEARTBEAT + frame(1, 0, qos))
    assert events == [("method", 2, qos), ("heartbeat",), ("method", 0, qos)]


def test_interleaved_channels():
    a = message(1, b"A" * 5000)
    b = message(2, b"B" * 10)
    c = message(3, b"")
    # publish/header/body frames of three channels interleaved, plus a heartbeat in the middle.
    stream = [a[0], b[0], a[1], c[0], b[1], HEARTBEAT, a[2], c[1], b[2], a[3]]
    events = run(b"".join(stream))
    assert events == [
        ("heartbeat",),
        expected_publish(3, b""),
        expected_publish(2, b"B" * 10),
        expected_publish(1, b"A" * 5000),
    ]


def test_heartbeat_allowed_while_content_is_pending():
    stream = publish(1) + HEARTBEAT + header(1, 2) + HEARTBEAT + body(1, b"ok")
    assert run(stream) == [("heartbeat",), ("heartbeat",), expected_publish(1, b"ok")]


def _stream() -> bytes:
    props = encode_properties({"headers": {"a": 1}, "priority": 3})
    qos = spec.encode_method(spec.BY_NAME["basic.qos"](0, 10, False))
    parts = (
        message(1, b"first")
        + [HEARTBEAT, frame(1, 1, qos)]
        + message(2, bytes(range(256)) * 20, props_raw=props)
        + message(1, b"")
        + [publish(5, "e", "k.x", True)]
        + message(3, b"z" * 4088)
        + [header(5, 4), body(5, b"ab"), body(5, b"cd")]
    )
    return b"".join(parts)


def test_split_feeding_at_every_byte_boundary_gives_identical_events():
    stream = _stream()
    whole = run(stream)
    assert len(whole) == 7
    for i in range(len(stream) + 1):
        assert run(stream[:i], stream[i:]) == whole, i


def test_byte_by_byte_feeding_gives_identical_events():
    stream = _stream()
    assert run(*[stream[i : i + 1] for i in range(len(stream))]) == run(stream)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(1, 2000), max_size=30))
def test_random_chunking_gives_identical_events(sizes):
    stream = _stream()
    chunks = []
    off = 0
    for s in sizes:
        chunks.append(stream[off : off + s])
        off += s
    chunks.append(stream[off:])
    assert run(*chunks) == run(stream)


def test_feeding_bytearray_and_memoryview_chunks():
    stream = _stream()
    half = len(stream) // 2
    assert run(bytearray(stream[:half]), bytes(stream[half:])) == run(stream)


def test_stopped_reader_ignores_the_rest():
    rec = Recorder()
    reader = FrameReader(rec, FRAME_MAX)

    def stop():
        rec.events.append(("heartbeat",))
        reader.stopped = True

    rec.on_heartbeat = stop
    reader.feed(HEARTBEAT + HEARTBEAT + b"\xff\xff")
    assert rec.events == [("heartbeat",)]


def test_drop_content_discards_a_pending_publish():
    rec = Recorder()
    reader = FrameReader(rec, FRAME_MAX)
    reader.feed(publish(1) + header(1, 10))
    assert reader.pending_content(1)
    reader.drop_content(1)
    assert not reader.pending_content(1)
    qos = spec.encode_method(spec.BY_NAME["basic.qos"](0, 1, False))
    reader.feed(frame(1, 1, qos))
    assert rec.events == [("method", 1, qos)]


# --- errors ----------------------------------------------------------------------------------


def error_of(*chunks: bytes, frame_max: int = FRAME_MAX, **kw) -> FrameError:
    with pytest.raises(FrameError) as e:
        run(*chunks, frame_max=frame_max, **kw)
    return e.value


def test_frame_too_large_is_detected_from_the_frame_header_alone():
    head = struct.pack(">BHI", 3, 1, FRAME_MAX + 1)
    assert error_of(head).code == 501
    # The largest allowed frame is fine: a payload of frame_max octets, as RabbitMQ accepts.
    data = b"x" * FRAME_MAX
    assert run(publish(1) + header(1, len(data)) + body(1, data)) == [expected_publish(1, data)]


def test_bad_frame_end():
    assert error_of(HEARTBEAT[:-1] + b"\x00").code == 501
    assert error_of(frame(1, 1, b"\x00\x3c\x00\x0b", end=0xCD)).code == 501


def test_header_without_publish_is_unexpected_frame():
    e = error_of(header(1, 5))
    assert e.code == 505
    assert "channel 1" in e.text


def test_body_without_header_is_unexpected_frame():
    assert error_of(body(1, b"x")).code == 505
    assert error_of(publish(1) + body(1, b"x")).code == 505


def test_second_header_is_unexpected_frame():
    assert error_of(publish(1) + header(1, 5) + header(1, 5)).code == 505


def test_method_while_content_pending_is_unexpected_frame():
    assert error_of(publish(1) + header(1, 5) + publish(1)).code == 505
    assert error_of(publish(1) + publish(1)).code == 505


def test_body_larger_than_announced():
    e = error_of(publish(1) + header(1, 3) + body(1, b"abcd"))
    assert e.code == 501
    assert error_of(publish(1) + header(1, 3) + body(1, b"ab") + body(1, b"cd")).code == 501


def test_header_checks():
    assert error_of(publish(1) + frame(2, 1, b"\x00" * 13)).code == 501  # too short
    assert error_of(publish(1) + header(1, 1, class_id=50)).code == 501
    assert error_of(publish(1) + header(1, 101), max_body=100).code == 501


def test_unknown_frame_type_and_heartbeat_on_a_channel():
    assert error_of(frame(9, 0, b"")).code == 501
    assert error_of(frame(8, 1, b"")).code == 505  # RabbitMQ: unexpected_frame


@pytest.mark.parametrize(
    "payload",
    [
        b"\x00\x3c\x00\x28",  # no arguments at all
        b"\x00\x3c\x00\x28\x00\x00",  # ticket only
        b"\x00\x3c\x00\x28\x00\x00\x05ab",  # exchange longer than the frame
        b"\x00\x3c\x00\x28\x00\x00\x00\x00",  # bits missing
        b"\x00\x3c\x00\x28\x00\x00\x00\x00\x00\x00",  # trailing byte
        b"\x00\x3c\x00\x28\x00\x00\x01\xff\x00\x00",  # exchange not UTF-8
    ],
)
def test_malformed_publish_is_frame_error(payload):
    # Followed by more bytes, so that reading past the frame cannot go unnoticed.
    e = error_of(frame(1, 1, payload) + HEARTBEAT * 3)
    assert e.code == 501
    assert (e.class_id, e.method_id) == (60, 40)


def test_errors_leave_other_events_already_delivered():
    rec = Recorder()
    reader = FrameReader(rec, FRAME_MAX)
    with pytest.raises(FrameError):
        reader.feed(HEARTBEAT + b"".join(message(1, b"ok")) + header(2, 1))
    assert rec.events == [("heartbeat",), expected_publish(1, b"ok")]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80))
def test_arbitrary_bytes_only_raise_frame_error(data):
    try:
        run(data)
    except FrameError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_mutated_stream_only_raises_frame_error(data):
    stream = bytearray(_stream())
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(stream) - 1))
        stream[i] = data.draw(st.integers(0, 255))
    try:
        run(bytes(stream))
    except FrameError:
        pass
