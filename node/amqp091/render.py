"""Outgoing frames: method frames via the general codec, deliveries via a hand-written fast path."""

from __future__ import annotations

import struct
from typing import Any

from ..wire.table import encode_shortstr
from .constants import FRAME_BODY, FRAME_HEADER, FRAME_METHOD
from .spec import encode_method

_pack_frame = struct.Struct(">BHI").pack
_pack_header_frame = struct.Struct(">BHIHHQ").pack
_pack_deliver_tail = struct.Struct(">QB").pack
_pack_ack = struct.Struct(">BHIHHQB").pack

HEARTBEAT = b"\x08\x00\x00\x00\x00\x00\x00\xce"
_DELIVER_ID = b"\x00\x3c\x00\x3c"
_GET_OK_ID = b"\x00\x3c\x00\x47"
_RETURN_ID = b"\x00\x3c\x00\x32"


def method_frame(channel: int, method: Any) -> bytes:
    payload = encode_method(method)
    return _pack_frame(FRAME_METHOD, channel, len(payload)) + payload + b"\xce"


def content_frames(channel: int, props_raw: bytes, body: bytes, frame_max: int) -> list[bytes]:
    """Content header + body frames; the body split at frame_max."""
    size = len(body)
    out = [
        _pack_header_frame(FRAME_HEADER, channel, 12 + len(props_raw), 60, 0, size),
        props_raw,
        b"\xce",
    ]
    if size:
        chunk = frame_max - 8
        if size <= chunk:
            out += (_pack_frame(FRAME_BODY, channel, size), body, b"\xce")
        else:
            view = memoryview(body)
            for start in range(0, size, chunk):
                part = view[start : start + chunk]
                out += (_pack_frame(FRAME_BODY, channel, len(part)), bytes(part), b"\xce")
    return out


def deliver(
    channel: int,
    ctag_raw: bytes,
    delivery_tag: int,
    redelivered: bool,
    route_raw: bytes,
    props_raw: bytes,
    body: bytes,
    frame_max: int,
) -> bytes:
    """basic.deliver + content header + body as one bytes object.

    `ctag_raw` is the consumer tag already encoded as a shortstr and `route_raw` the exchange and
    routing key as published: neither is re-encoded per message.
    """
    size = len(body)
    mlen = 4 + len(ctag_raw) + 9 + len(route_raw)
    if size and size <= frame_max - 8:
        return b"".join(
            (
                _pack_frame(FRAME_METHOD, channel, mlen),
                _DELIVER_ID,
                ctag_raw,
                _pack_deliver_tail(delivery_tag, redelivered),
                route_raw,
                b"\xce",
                _pack_header_frame(FRAME_HEADER, channel, 12 + len(props_raw), 60, 0, size),
                props_raw,
                b"\xce",
                _pack_frame(FRAME_BODY, channel, size),
                body,
                b"\xce",
            )
        )
    head = [
        _pack_frame(FRAME_METHOD, channel, mlen),
        _DELIVER_ID,
        ctag_raw,
        _pack_deliver_tail(delivery_tag, redelivered),
        route_raw,
        b"\xce",
    ]
    return b"".join(head + content_frames(channel, props_raw, body, frame_max))


def get_ok(
    channel: int,
    delivery_tag: int,
    redelivered: bool,
    route_raw: bytes,
    message_count: int,
    props_raw: bytes,
    body: bytes,
    frame_max: int,
) -> bytes:
    payload = b"".join(
        (
            _GET_OK_ID,
            _pack_deliver_tail(delivery_tag, redelivered),
            route_raw,
            struct.pack(">I", message_count),
        )
    )
    head = [_pack_frame(FRAME_METHOD, channel, len(payload)), payload, b"\xce"]
    return b"".join(head + content_frames(channel, props_raw, body, frame_max))


def basic_return(
    channel: int,
    reply_code: int,
    reply_text: str,
    route_raw: bytes,
    props_raw: bytes,
    body: bytes,
    frame_max: int,
) -> bytes:
    payload = b"".join(
        (_RETURN_ID, struct.pack(">H", reply_code), encode_shortstr(reply_text), route_raw)
    )
    head = [_pack_frame(FRAME_METHOD, channel, len(payload)), payload, b"\xce"]
    return b"".join(head + content_frames(channel, props_raw, body, frame_max))


def basic_ack(channel: int, delivery_tag: int, multiple: bool) -> bytes:
    return _pack_ack(FRAME_METHOD, channel, 13, 60, 80, delivery_tag, multiple) + b"\xce"


def basic_nack(channel: int, delivery_tag: int, multiple: bool) -> bytes:
    # nack bits: multiple (bit 0), requeue (bit 1) — requeue is meaningless to a publisher.
    return (
        _pack_ack(FRAME_METHOD, channel, 13, 60, 120, delivery_tag, 1 if multiple else 0) + b"\xce"
    )
