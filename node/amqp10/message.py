"""AMQP 1.0 messages ↔ the core's message: its 1.0 view and 0-9-1 view, RabbitMQ's mapping.

The core's message (node.core.message) records the protocol it arrived in and keeps one view per
protocol. The 0-9-1 view (property bytes + body) is the core's canonical form, so a message published
over 1.0 gets it at once, on publish, following RabbitMQ's documented conversions
(https://www.rabbitmq.com/docs/conversions): header durable/priority/ttl → delivery_mode/priority/
expiration; properties message-id, user-id, reply-to, correlation-id, content-type/-encoding,
creation-time, group-id → message_id, user_id, reply_to, correlation_id, content_type/_encoding,
timestamp, app_id; application-properties and `x-` message annotations → headers. A body of one data
section is the body; any other body (amqp-value, amqp-sequence, several data sections) travels as its
AMQP encoding with `type` set to "amqp-1.0".

To keep 1.0 → 1.0 exact and cheap, the sections as they arrived (everything after the header and the
delivery annotations) are the 1.0 view (`Message.amqp10`), around the body so the body is not held
twice; a message without it (published over 0-9-1, or recovered from the store) is converted the
other way on its first delivery to a 1.0 consumer (`view_of`) and the result cached on the message.
"""

from __future__ import annotations

import re
import struct
import uuid
from typing import Any

from ..wire import table as ft
from ..wire.properties import decode_properties, encode_properties
from .codec import (
    Array,
    Byte,
    Char,
    DecodeError,
    Described,
    Float,
    Int,
    Short,
    Symbol,
    Timestamp,
    UByte,
    UInt,
    ULong,
    UShort,
    _enc_map,
    decode,
    encode,
    skip,
)
from .performatives import descriptor_code

HEADER, DELIVERY_ANN, MESSAGE_ANN, PROPERTIES, APP_PROPS = 0x70, 0x71, 0x72, 0x73, 0x74
DATA, SEQUENCE, VALUE, FOOTER = 0x75, 0x76, 0x77, 0x78
BODY_TYPE = "amqp-1.0"

_pI = struct.Struct(">I").pack
_pB = struct.Struct(">B").pack


class Parsed:
    """The sections of a transferred message, with the offsets the cache needs."""

    __slots__ = (
        "header",
        "annotations",
        "properties",
        "app_props",
        "rest_start",
        "body_start",
        "body_end",
        "data",
        "body_kind",
    )

    def __init__(self) -> None:
        self.header: list[Any] | None = None
        self.annotations: dict[Any, Any] | None = None
        self.properties: list[Any] | None = None
        self.app_props: dict[Any, Any] | None = None
        self.rest_start = 0  # where message annotations (or the bare message) begin
        self.body_start = -1
        self.body_end = -1
        self.data: list[bytes] = []
        self.body_kind = 0  # DATA, SEQUENCE or VALUE (of the first body section)


def parse(payload: bytes) -> Parsed:
    """Split a message into its sections; raises DecodeError for anything malformed."""
    p = Parsed()
    off = 0
    n = len(payload)
    last = 0
    while off < n:
        start = off
        value, off = decode(payload, off)
        if not isinstance(value, Described):
            raise DecodeError("message section is not a described value")
        code = descriptor_code(value.descriptor)
        v = value.value
        if code is None or not 0x70 <= code <= 0x78:
            raise DecodeError(f"unknown message section {value.descriptor!r}")
        if code < last or (code == last and code not in (DATA, SEQUENCE)):
            raise DecodeError("message sections out of order")
        if code in (DATA, SEQUENCE, VALUE):
            if p.body_start < 0:
                p.body_start = start
                p.body_kind = code
            elif code != p.body_kind or code == VALUE:
                raise DecodeError("a message body mixes section types")
            p.body_end = off
            if code == DATA:
                if not isinstance(v, bytes):
                    raise DecodeError("data section is not binary")
                p.data.append(v)
            elif code == SEQUENCE and not isinstance(v, list):
                raise DecodeError("amqp-sequence section is not a list")
            last = code
            continue
        if code == HEADER:
            if not isinstance(v, list):
                raise DecodeError("header section is not a list")
            p.header = v
            p.rest_start = off
        elif code == DELIVERY_ANN:
            if not isinstance(v, dict) and v is not None:
                raise DecodeError("delivery-annotations section is not a map")
            p.rest_start = off
        elif code == MESSAGE_ANN:
            if not isinstance(v, dict) and v is not None:
                raise DecodeError("message-annotations section is not a map")
            p.annotations = v
        elif code == PROPERTIES:
            if not isinstance(v, list):
                raise DecodeError("properties section is not a list")
            p.properties = v
        elif code == APP_PROPS:
            if not isinstance(v, dict) and v is not None:
                raise DecodeError("application-properties section is not a map")
            p.app_props = v
        elif code == FOOTER and not isinstance(v, dict) and v is not None:
            raise DecodeError("footer section is not a map")
        last = code
    return p


def _field(lst: list[Any] | None, i: int) -> Any:
    if lst is None or i >= len(lst):
        return None
    return lst[i]


def _shortstr_ok(s: str) -> bool:
    return len(s.encode("utf-8")) < 256 and "\x00" not in s


def _id_to_091(value: Any, prop: str, header: str, props: dict, headers: dict) -> None:
    if isinstance(value, str) and not isinstance(value, Symbol):
        if _shortstr_ok(value):
            props[prop] = value
        else:
            headers[header] = value
    elif isinstance(value, uuid.UUID):
        props[prop] = f"urn:uuid:{value}"
    elif isinstance(value, int) and not isinstance(value, bool):
        props[prop] = str(int(value))
    elif isinstance(value, bytes):
        headers[header] = ft.ByteArray(value)


def value_to_091(v: Any, depth: int = 0) -> Any:
    """An AMQP 1.0 value as a 0-9-1 field value (RabbitMQ's type conversion table)."""
    t = type(v)
    if t is str or t is Symbol or t is Char:
        return str(v)
    if t is bool or v is None:
        return v
    if t is int:
        return v if -(2**63) <= v < 2**63 else None
    if t is bytes:
        return ft.ByteArray(v)
    if t is UByte:
        return ft.Int("B", int(v))
    if t is Byte:
        return ft.Int("b", int(v))
    if t is Short:
        return ft.Int("s", int(v))
    if t is UShort:
        return ft.Int("u", int(v))
    if t is Int:
        return int(v)
    if t is UInt:
        return ft.Int("i", int(v))
    if t is ULong:
        return int(v) if v < 2**63 else None
    if t is float or t is Float:
        return float(v)
    if t is Timestamp:
        return ft.Timestamp(max(0, int(v) // 1000))
    if t is uuid.UUID:
        return str(v)
    if depth < 16:
        if t is list:
            return [value_to_091(x, depth + 1) for x in v]
        if t is Array:
            return [value_to_091(x, depth + 1) for x in v.items]
        if t is dict:
            return {str(k): value_to_091(x, depth + 1) for k, x in v.items() if isinstance(k, str)}
    return None


def to_core(p: Parsed, payload: bytes) -> tuple[bytes, bytes, tuple]:
    """(props_raw, body, amqp10 cache) for a parsed 1.0 message."""
    props: dict[str, Any] = {}
    headers: dict[str, Any] = {}
    h = p.header
    durable = bool(_field(h, 0))
    priority = _field(h, 1)
    ttl = _field(h, 2)
    props["delivery_mode"] = 2 if durable else 1
    if isinstance(priority, int) and not isinstance(priority, bool) and 0 <= priority < 256:
        props["priority"] = int(priority)
    else:
        priority = None
    if isinstance(ttl, int) and not isinstance(ttl, bool) and ttl >= 0:
        props["expiration"] = str(int(ttl))
    else:
        ttl = None
    pr = p.properties
    if pr:
        mid = _field(pr, 0)
        if mid is not None:
            _id_to_091(mid, "message_id", "x-message-id", props, headers)
        uid = _field(pr, 1)
        if isinstance(uid, bytes):
            try:
                s = uid.decode("utf-8")
                if _shortstr_ok(s):
                    props["user_id"] = s
            except UnicodeDecodeError:
                pass
        reply_to = _field(pr, 4)
        if isinstance(reply_to, str) and _shortstr_ok(reply_to):
            props["reply_to"] = str(reply_to)
        cid = _field(pr, 5)
        if cid is not None:
            _id_to_091(cid, "correlation_id", "x-correlation-id", props, headers)
        ct = _field(pr, 6)
        if isinstance(ct, str) and _shortstr_ok(ct):
            props["content_type"] = str(ct)
        ce = _field(pr, 7)
        if isinstance(ce, str) and _shortstr_ok(ce):
            props["content_encoding"] = str(ce)
        ctime = _field(pr, 9)
        if isinstance(ctime, int) and not isinstance(ctime, bool) and ctime >= 0:
            props["timestamp"] = ft.Timestamp(int(ctime) // 1000)
        gid = _field(pr, 10)
        if isinstance(gid, str) and _shortstr_ok(gid):
            props["app_id"] = str(gid)
    if p.app_props:
        for k, v in p.app_props.items():
            if isinstance(k, str) and _shortstr_ok(k):
                headers[str(k)] = value_to_091(v)
    if p.annotations:
        for k, v in p.annotations.items():
            if not isinstance(k, str) or not k.startswith("x-") or not _shortstr_ok(k):
                continue
            if k.startswith("x-cc"):
                headers["CC"] = value_to_091(v)
            elif k not in ("x-exchange", "x-routing-key", "x-basic-type"):
                headers[str(k)] = value_to_091(v)
    if p.body_start < 0:
        body = b""
        wrap = True
        pre = payload[p.rest_start :]
        post = b""
    elif p.body_kind == DATA and len(p.data) == 1:
        body = p.data[0]
        wrap = True
        pre = payload[p.rest_start : p.body_start]
        post = payload[p.body_end :]
    else:
        body = payload[p.body_start : p.body_end]
        wrap = False
        props["type"] = BODY_TYPE
        pre = payload[p.rest_start : p.body_start]
        post = payload[p.body_end :]
    if headers:
        props["headers"] = headers
    props_raw = encode_properties(props)
    cache = (_header(durable, priority, ttl, 0), durable, priority, ttl, pre, wrap, post)
    return props_raw, body, cache


class Converted:
    """A published message converted for the core, plus what routing needs from it."""

    __slots__ = ("props_raw", "body", "cache", "to", "subject", "user_id")

    def __init__(
        self, props_raw: bytes, body: bytes, cache: tuple, to: Any, subject: Any, user_id: Any
    ) -> None:
        self.props_raw = props_raw
        self.body = body
        self.cache = cache
        self.to = to
        self.subject = subject
        self.user_id = user_id


# Conversions by the bytes before the body: publishers repeat their sections, so most messages
# convert by one lookup. Only prefixes that were fully decoded (validated) are stored.
_prefix_cache: dict[bytes, tuple] = {}
PREFIX_CACHE_MAX = 512


# The last prefix converted from the cache, with its conversion: a publisher's next message most
# often repeats it, which a startswith and the data section's header confirm without walking the
# sections again.
_last: tuple[bytes, tuple] | None = None


def convert(payload: bytes) -> Converted:
    """Decode and convert a transferred message; raises DecodeError if it is malformed."""
    global _last
    last = _last
    if last is not None:
        prefix = last[0]
        at = len(prefix)
        if payload.startswith(prefix) and payload[at : at + 3] == b"\x00\x53\x75":
            n = len(payload)
            t = payload[at + 3] if n > at + 4 else 0
            if t == 0xA0:
                start = at + 5
                if start + payload[at + 4] == n:
                    props_raw, cache, to, subject, user_id = last[1]
                    return Converted(props_raw, payload[start:], cache, to, subject, user_id)
            elif t == 0xB0 and n >= at + 8:
                start = at + 8
                if start + int.from_bytes(payload[at + 4 : start], "big") == n:
                    props_raw, cache, to, subject, user_id = last[1]
                    return Converted(props_raw, payload[start:], cache, to, subject, user_id)
    fast = _fast_split(payload)
    if fast is not None:
        body_start, data_start, body_end = fast
        prefix = payload[:body_start]
        hit = _prefix_cache.get(prefix)
        if hit is not None:
            _last = (prefix, hit)
            props_raw, cache, to, subject, user_id = hit
            return Converted(props_raw, payload[data_start:body_end], cache, to, subject, user_id)
    p = parse(payload)
    props_raw, body, cache = to_core(p, payload)
    pr = p.properties
    to, subject, user_id = _field(pr, 2), _field(pr, 3), _field(pr, 1)
    if fast is not None and len(prefix) <= 1024:
        if len(_prefix_cache) >= PREFIX_CACHE_MAX:
            _prefix_cache.clear()
        _prefix_cache[prefix] = (props_raw, cache, to, subject, user_id)
    return Converted(props_raw, body, cache, to, subject, user_id)


def _fast_split(payload: bytes) -> tuple[int, int, int] | None:
    """(body section start, body bytes start, end) for `[sections] data` messages, else None."""
    n = len(payload)
    off = 0
    try:
        while off < n:
            if payload[off] != 0 or payload[off + 1] != 0x53:
                return None
            code = payload[off + 2]
            if code == DATA:
                t = payload[off + 3]
                if t == 0xA0:
                    start = off + 5
                    end = start + payload[off + 4]
                elif t == 0xB0:
                    start = off + 8
                    end = start + int.from_bytes(payload[off + 4 : off + 8], "big")
                else:
                    return None
                if end != n:
                    return None  # more sections follow (several data sections, a footer)
                return off, start, end
            if not HEADER <= code <= APP_PROPS:
                return None
            off = skip(payload, off + 3)
    except (IndexError, DecodeError):
        return None
    return None


# -- 0-9-1 → 1.0 ----------------------------------------------------------------------------------

_UUID_URN = re.compile(r"^urn:uuid:([0-9a-fA-F-]{36})$")


def _id_to_10(value: str) -> Any:
    m = _UUID_URN.match(value)
    if m:
        try:
            return uuid.UUID(m.group(1))
        except ValueError:
            pass
    return value


def value_to_10(v: Any, depth: int = 0) -> Any:
    t = type(v)
    if t is str or t is bool or v is None or t is float:
        return v
    if t is int:
        return Int(v) if -(2**31) <= v < 2**31 else v
    if t is ft.Int:
        k = v.kind
        return {"b": Byte, "B": UByte, "s": Short, "u": UShort, "i": UInt, "L": ULong}[k](v.value)
    if t is bytes:
        return v
    if t is ft.ByteArray:
        return v.data
    if t is ft.Timestamp:
        return Timestamp(v.seconds * 1000)
    if depth < 16:
        if t is list:
            return [value_to_10(x, depth + 1) for x in v]
        if t is dict:
            return {k: value_to_10(x, depth + 1) for k, x in v.items()}
    return str(v)  # decimal: as text


def from_core(
    props_raw: bytes, exchange: str, routing_key: str
) -> tuple[bytes, bool, Any, Any, bytes, bool, bytes]:
    """The amqp10 cache for a message published over 0-9-1 (or recovered from the store)."""
    try:
        props = decode_properties(props_raw) if props_raw else {}
    except ft.DecodeError:
        props = {}
    durable = props.get("delivery_mode") == 2
    priority = props.get("priority")
    ttl = None
    exp = props.get("expiration")
    if isinstance(exp, str) and exp.isdigit():
        ttl = int(exp)
        if ttl >= 2**32:
            ttl = None
    ann: dict[Any, Any] = {Symbol("x-exchange"): exchange, Symbol("x-routing-key"): routing_key}
    app: dict[Any, Any] = {}
    headers = props.get("headers") or {}
    wrap = props.get("type") != BODY_TYPE
    if props.get("type") is not None and wrap:
        ann[Symbol("x-basic-type")] = props["type"]
    for k, v in headers.items():
        if k.startswith("x-"):
            ann[Symbol(k)] = value_to_10(v)
        elif not isinstance(v, (dict, list)):
            app[k] = value_to_10(v)
    fields: list[Any] = [None] * 13
    if props.get("message_id") is not None:
        fields[0] = _id_to_10(props["message_id"])
    if props.get("user_id") is not None:
        fields[1] = props["user_id"].encode("utf-8")
    if props.get("reply_to") is not None:
        fields[4] = props["reply_to"]
    if props.get("correlation_id") is not None:
        fields[5] = _id_to_10(props["correlation_id"])
    if props.get("content_type") is not None:
        fields[6] = Symbol(_ascii(props["content_type"]))
    if props.get("content_encoding") is not None:
        fields[7] = Symbol(_ascii(props["content_encoding"]))
    if props.get("timestamp") is not None:
        fields[9] = Timestamp(props["timestamp"].seconds * 1000)
    if props.get("app_id") is not None:
        fields[10] = props["app_id"]
    parts = [b"\x00\x53\x72" + _enc_map(ann)]
    while fields and fields[-1] is None:
        fields.pop()
    if fields:
        enc: list[bytes] = []
        for i, f in enumerate(fields):
            if f is None:
                enc.append(b"\x40")
            elif i == 1:
                enc.append(encode(bytes(f)))
            else:
                enc.append(encode(f))
        from .performatives import _list_of_encoded

        parts.append(b"\x00\x53\x73" + _list_of_encoded(enc))
    if app:
        parts.append(b"\x00\x53\x74" + _enc_map(app))
    pre = b"".join(parts)
    return (_header(durable, priority, ttl, 0), durable, priority, ttl, pre, wrap, b"")


# The last 0-9-1 → 1.0 conversion: a 0-9-1 publisher repeats one property bytes object, and a
# message fanned out to several queues is one copy per queue, so most conversions repeat it.
_last_view: tuple[Any, str, str, tuple] = (None, "", "", ())


def view_of(msg: Any) -> tuple:
    """The 1.0 view (the `amqp10` cache) of a message that has none; the caller caches it."""
    global _last_view
    props_raw, exchange, routing_key = msg.props_raw, msg.exchange, msg.routing_key
    last = _last_view
    if props_raw is last[0] and exchange == last[1] and routing_key == last[2]:
        return last[3]
    view = from_core(props_raw, exchange, routing_key)
    _last_view = (props_raw, exchange, routing_key, view)
    return view


def _ascii(s: str) -> str:
    return s.encode("ascii", "replace").decode("ascii")


def _header(durable: bool, priority: Any, ttl: Any, delivery_count: int) -> bytes:
    if not (durable or priority is not None or ttl is not None or delivery_count):
        return b""
    fields = [
        b"\x41" if durable else b"\x42",
        b"\x50" + _pB(priority) if priority is not None else b"\x40",
        (b"\x70" + _pI(ttl)) if ttl is not None else b"\x40",
        b"\x40",
        (b"\x70" + _pI(delivery_count & 0xFFFFFFFF)) if delivery_count else b"\x40",
    ]
    while fields[-1] == b"\x40":
        fields.pop()
    body = b"".join(fields)
    return b"\x00\x53\x70\xc0" + _pB(len(body) + 1) + _pB(len(fields)) + body


_SMALL_DATA = tuple(b"\x00\x53\x75\xa0" + bytes((n,)) for n in range(256))


def data_section(body: bytes) -> bytes:
    n = len(body)
    if n < 256:
        return _SMALL_DATA[n]
    return b"\x00\x53\x75\xb0" + _pI(n)


def merge_annotations(pre: bytes, annotations: dict[Any, Any]) -> bytes:
    """`pre` (the sections before the body) with message annotations merged in (modified)."""
    extra = {Symbol(str(k)): v for k, v in annotations.items()}
    if pre.startswith(b"\x00\x53\x72"):
        try:
            value, off = decode(pre, 0)
        except DecodeError:
            return pre
        merged = dict(value.value or {})
        merged.update(extra)
        return b"\x00\x53\x72" + _enc_map(merged) + pre[off:]
    try:
        return b"\x00\x53\x72" + _enc_map(extra) + pre
    except TypeError:
        return pre


def payload_parts(
    cache: tuple, body: bytes, delivery_count: int, annotations: dict | None = None
) -> list[bytes]:
    """The encoded message for a delivery, as parts to join (the body is not copied here)."""
    h0, durable, priority, ttl, pre, wrap, post = cache
    header = _header(durable, priority, ttl, delivery_count) if delivery_count else h0
    if annotations:
        pre = merge_annotations(pre, annotations)
    if wrap:
        return [header, pre, data_section(body), body, post]
    return [header, pre, body, post]


__all__ = ["Parsed", "from_core", "parse", "payload_parts", "to_core", "view_of"]
