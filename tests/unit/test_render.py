"""node.amqp091.render: outgoing deliveries parse back to the methods, headers and bodies they carry."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from merpati.node.amqp091 import render, spec
from merpati.node.wire.properties import decode_properties, encode_properties
from merpati.node.wire.table import encode_shortstr

from ._strategies import shortstrs


def parse_frames(data: bytes, frame_max: int) -> list[tuple[int, int, bytes]]:
    """Cut bytes into (type, channel, payload), checking the envelope like a client would."""
    frames = []
    off = 0
    while off < len(data):
        ftype, channel, size = struct.unpack_from(">BHI", data, off)
        assert size <= frame_max - 8, f"frame of {size} bytes exceeds frame_max {frame_max}"
        payload = data[off + 7 : off + 7 + size]
        assert len(payload) == size
        assert data[off + 7 + size] == 0xCE
        frames.append((ftype, channel, payload))
        off += 8 + size
    return frames


def parse_content(data: bytes, frame_max: int):
    """(method, props_raw, body, number of body frames) of a method + content on one channel."""
    frames = parse_frames(data, frame_max)
    (mt, ch, mpayload), (ht, hch, hpayload), *bodies = frames
    assert mt == 1 and ht == 2
    assert {ch, hch} | {c for _, c, _ in bodies} == {ch}
    m = spec.decode_method(mpayload)
    class_id, weight, size = struct.unpack_from(">HHQ", hpayload)
    assert (class_id, weight) == (60, 0)
    props_raw = hpayload[12:]
    assert all(t == 3 for t, _, _ in bodies)
    assert all(len(p) > 0 for _, _, p in bodies)
    body = b"".join(p for _, _, p in bodies)
    assert len(body) == size
    return m, props_raw, body, len(bodies)


def route(exchange: str, routing_key: str) -> bytes:
    return encode_shortstr(exchange) + encode_shortstr(routing_key)


PROPS = encode_properties(
    {"content_type": "application/json", "headers": {"x": 1}, "delivery_mode": 2}
)


@pytest.mark.parametrize("size", [0, 1, 4087, 4088, 4089, 8176, 8177, 20000])
def test_deliver_splits_the_body_at_frame_max(size):
    frame_max = 4096
    body = bytes(i % 251 for i in range(size))
    out = render.deliver(
        7, encode_shortstr("ctag"), 42, True, route("ex", "a.b"), PROPS, body, frame_max
    )
    m, props_raw, got, n_bodies = parse_content(out, frame_max)
    assert m == spec.BY_NAME["basic.deliver"]("ctag", 42, True, "ex", "a.b")
    assert props_raw == PROPS
    assert decode_properties(props_raw)["delivery_mode"] == 2
    assert got == body
    assert n_bodies == -(-size // (frame_max - 8))


@settings(max_examples=100, deadline=None)
@given(
    channel=st.integers(0, 2**16 - 1),
    ctag=shortstrs(255),
    tag=st.integers(0, 2**64 - 1),
    redelivered=st.booleans(),
    exchange=shortstrs(255),
    routing_key=shortstrs(255),
    body=st.binary(max_size=10000),
    frame_max=st.integers(4096, 9000),
)
def test_deliver_round_trips(
    channel, ctag, tag, redelivered, exchange, routing_key, body, frame_max
):
    out = render.deliver(
        channel,
        encode_shortstr(ctag),
        tag,
        redelivered,
        route(exchange, routing_key),
        PROPS,
        body,
        frame_max,
    )
    frames = parse_frames(out, frame_max)
    assert {c for _, c, _ in frames} == {channel}
    m, props_raw, got, _ = parse_content(out, frame_max)
    assert m == spec.BY_NAME["basic.deliver"](ctag, tag, redelivered, exchange, routing_key)
    assert props_raw == PROPS and got == body


@settings(max_examples=60, deadline=None)
@given(
    tag=st.integers(0, 2**64 - 1),
    redelivered=st.booleans(),
    exchange=shortstrs(50),
    routing_key=shortstrs(50),
    count=st.integers(0, 2**32 - 1),
    body=st.binary(max_size=10000),
)
def test_get_ok_round_trips(tag, redelivered, exchange, routing_key, count, body):
    out = render.get_ok(3, tag, redelivered, route(exchange, routing_key), count, PROPS, body, 4096)
    m, props_raw, got, n = parse_content(out, 4096)
    assert m == spec.BY_NAME["basic.get-ok"](tag, redelivered, exchange, routing_key, count)
    assert props_raw == PROPS and got == body
    assert n == -(-len(body) // 4088)


@settings(max_examples=60, deadline=None)
@given(
    code=st.sampled_from([312, 313]),
    text=shortstrs(100),
    exchange=shortstrs(50),
    routing_key=shortstrs(50),
    body=st.binary(max_size=10000),
)
def test_basic_return_round_trips(code, text, exchange, routing_key, body):
    out = render.basic_return(2, code, text, route(exchange, routing_key), b"\x00\x00", body, 4096)
    m, props_raw, got, _ = parse_content(out, 4096)
    assert m == spec.BY_NAME["basic.return"](code, text, exchange, routing_key)
    assert props_raw == b"\x00\x00" and got == body


def test_empty_body_has_no_body_frame():
    for out in (
        render.deliver(1, encode_shortstr("t"), 1, False, route("", "q"), b"\x00\x00", b"", 4096),
        render.get_ok(1, 1, False, route("", "q"), 0, b"\x00\x00", b"", 4096),
        render.basic_return(1, 312, "NO_ROUTE", route("", "q"), b"\x00\x00", b"", 4096),
    ):
        frames = parse_frames(out, 4096)
        assert [t for t, _, _ in frames] == [1, 2]


def test_method_frame_ack_nack_heartbeat():
    out = render.method_frame(5, spec.BY_NAME["basic.qos"](0, 10, True))
    [(t, ch, payload)] = parse_frames(out, 4096)
    assert (t, ch) == (1, 5)
    assert spec.decode_method(payload) == spec.BY_NAME["basic.qos"](0, 10, True)

    [(t, ch, payload)] = parse_frames(render.basic_ack(1, 2**64 - 1, True), 4096)
    assert spec.decode_method(payload) == spec.BY_NAME["basic.ack"](2**64 - 1, True)
    [(t, ch, payload)] = parse_frames(render.basic_nack(1, 9, False), 4096)
    assert spec.decode_method(payload) == spec.BY_NAME["basic.nack"](9, False, False)
    [(t, ch, payload)] = parse_frames(render.basic_nack(1, 9, True), 4096)
    assert spec.decode_method(payload) == spec.BY_NAME["basic.nack"](9, True, False)

    assert parse_frames(render.HEARTBEAT, 4096) == [(8, 0, b"")]


def test_content_frames_split():
    parts = render.content_frames(1, b"\x00\x00", b"x" * 10000, 4096)
    frames = parse_frames(b"".join(parts), 4096)
    assert [t for t, _, _ in frames] == [2, 3, 3, 3]
    assert [len(p) for _, _, p in frames[1:]] == [4088, 4088, 10000 - 2 * 4088]
