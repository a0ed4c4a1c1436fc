"""Basic-class content properties: the raw bytes are kept; these helpers read or build them.

This property list is the core's canonical form of a message's properties (see node.core.message):
a 0-9-1 publish carries it as is, a 1.0 transfer is converted to it on publish (node.amqp10.message).

A content header's property bytes (flags + property list) travel from basic.publish to basic.deliver
untouched. Only the few properties the broker acts on (headers for the headers exchange, delivery
mode, expiration, priority, user-id) are ever decoded, and only when their flag is set.
"""

from __future__ import annotations

import struct
from typing import Any

from .table import (
    DecodeError,
    Timestamp,
    decode_shortstr,
    decode_table,
    encode_shortstr,
    encode_table,
    encode_value,
)

# Property name, flag bit, type.
PROPERTIES: list[tuple[str, int, str]] = [
    ("content_type", 0x8000, "shortstr"),
    ("content_encoding", 0x4000, "shortstr"),
    ("headers", 0x2000, "table"),
    ("delivery_mode", 0x1000, "octet"),
    ("priority", 0x0800, "octet"),
    ("correlation_id", 0x0400, "shortstr"),
    ("reply_to", 0x0200, "shortstr"),
    ("expiration", 0x0100, "shortstr"),
    ("message_id", 0x0080, "shortstr"),
    ("timestamp", 0x0040, "timestamp"),
    ("type", 0x0020, "shortstr"),
    ("user_id", 0x0010, "shortstr"),
    ("app_id", 0x0008, "shortstr"),
    ("cluster_id", 0x0004, "shortstr"),
]

FLAG_HEADERS = 0x2000
FLAG_DELIVERY_MODE = 0x1000
FLAG_PRIORITY = 0x0800
FLAG_REPLY_TO = 0x0200
FLAG_EXPIRATION = 0x0100
FLAG_USER_ID = 0x0010


def flags_of(raw: bytes) -> int:
    """The property flags word of raw property bytes (0 for an empty list)."""
    if len(raw) < 2:
        return 0
    return (raw[0] << 8) | raw[1]


def decode_properties(raw: bytes) -> dict[str, Any]:
    """Decode raw property bytes to a dict of the properties present; raises DecodeError."""
    if len(raw) < 2:
        raise DecodeError("content header without property flags")
    flags = (raw[0] << 8) | raw[1]
    off = 2
    # Continuation flags (bit 0) announce more flag words; basic has 14 properties so any further
    # words carry nothing, but they must be skipped to reach the property list.
    last = flags
    while last & 1:
        if off + 2 > len(raw):
            raise DecodeError("truncated property flags")
        last = (raw[off] << 8) | raw[off + 1]
        off += 2
    props: dict[str, Any] = {}
    try:
        for name, bit, kind in PROPERTIES:
            if not flags & bit:
                continue
            if kind == "shortstr":
                props[name], off = decode_shortstr(raw, off)
            elif kind == "octet":
                if off >= len(raw):
                    raise DecodeError(f"truncated property {name}")
                props[name] = raw[off]
                off += 1
            elif kind == "table":
                props[name], off = decode_table(raw, off)
            else:
                (props[name],) = struct.unpack_from(">Q", raw, off)
                props[name] = Timestamp(props[name])
                off += 8
    except struct.error:
        raise DecodeError("truncated content properties")
    if off != len(raw):
        raise DecodeError("content header has trailing bytes after its properties")
    return props


def encode_properties(props: dict[str, Any]) -> bytes:
    flags = 0
    parts: list[bytes] = []
    for name, bit, kind in PROPERTIES:
        value = props.get(name)
        if value is None:
            continue
        flags |= bit
        if kind == "shortstr":
            parts.append(encode_shortstr(value))
        elif kind == "octet":
            parts.append(bytes((int(value),)))
        elif kind == "table":
            parts.append(encode_table(value))
        else:
            seconds = value.seconds if isinstance(value, Timestamp) else int(value)
            parts.append(struct.pack(">Q", seconds))
    return struct.pack(">H", flags) + b"".join(parts)


# Field values by type letter: the fixed widths, and the kinds with a 4-byte length prefix.
_FIXED_WIDTH = {"t": 1, "b": 1, "B": 1, "s": 2, "u": 2, "I": 4, "i": 4, "f": 4, "D": 5}
_FIXED_WIDTH.update({"l": 8, "L": 8, "d": 8, "T": 8, "V": 0})
_LENGTH_PREFIXED = frozenset("SxFA")


def _value_end(raw: bytes, off: int) -> int:
    """Where the field value starting at `off` (its type letter) ends, without decoding it."""
    kind = chr(raw[off])
    off += 1
    if kind in _LENGTH_PREFIXED:
        return off + 4 + int.from_bytes(raw[off : off + 4], "big")
    return off + _FIXED_WIDTH[kind]


def set_header(raw: bytes, name: str, value: Any) -> bytes:
    """`raw` with the header `name` set to `value` (replacing one of that name).

    The field is spliced into the bytes: every other property and header keeps its exact
    encoding. Decoding and re-encoding would not keep it: a small `l` (long) integer comes back
    as `I`, and a client that reads its header as a long (Java's Long) would then fail. Raises
    DecodeError on malformed property bytes."""
    field = encode_shortstr(name) + encode_value(value)
    flags = flags_of(raw)
    if len(raw) < 2 or flags & 1:
        # No flags, or continuation flag words (no client sends them): decode and re-encode.
        props = decode_properties(raw) if len(raw) >= 2 else {}
        props["headers"] = {**(props.get("headers") or {}), name: value}
        return encode_properties(props)
    off = 2
    try:
        for bit in (0x8000, 0x4000):  # content-type and content-encoding precede the headers
            if flags & bit:
                off += 1 + raw[off]
        if off > len(raw):
            raise DecodeError("truncated content properties")
        if not flags & FLAG_HEADERS:
            table = struct.pack(">I", len(field)) + field
            return struct.pack(">H", flags | FLAG_HEADERS) + raw[2:off] + table + raw[off:]
        start = off + 4
        end = start + int.from_bytes(raw[off:start], "big")
        key = encode_shortstr(name)
        kept = []
        pos = start
        while pos < end:
            value_end = _value_end(raw, pos + 1 + raw[pos])
            if raw[pos : pos + len(key)] != key:  # the length byte and the name
                kept.append(raw[pos:value_end])
            pos = value_end
    except (IndexError, KeyError):
        raise DecodeError("malformed headers table")
    if pos != end or end > len(raw):
        raise DecodeError("malformed headers table")
    body = b"".join(kept) + field
    return raw[:off] + struct.pack(">I", len(body)) + body + raw[end:]


def is_persistent(raw: bytes) -> bool:
    """delivery_mode == 2, read without decoding properties that precede it unless necessary."""
    flags = flags_of(raw)
    if not flags & FLAG_DELIVERY_MODE:
        return False
    return decode_properties(raw).get("delivery_mode") == 2


_last_mode: tuple[bytes, int] = (b"", 0)


def delivery_mode(raw: bytes) -> int:
    """The delivery-mode property (0 when absent), reading only what precedes it."""
    global _last_mode
    last = _last_mode
    if raw is last[0]:
        # The same property bytes object as last time (a publisher's repeated properties are
        # shared): asked on every enqueue to a durable queue, so worth one identity check.
        return last[1]
    mode = _delivery_mode(raw)
    _last_mode = (raw, mode)
    return mode


def _delivery_mode(raw: bytes) -> int:
    if len(raw) < 2:
        return 0
    flags = (raw[0] << 8) | raw[1]
    if not flags & FLAG_DELIVERY_MODE or flags & 1:
        return (
            0
            if not flags & FLAG_DELIVERY_MODE
            else (decode_properties(raw).get("delivery_mode") or 0)
        )
    off = 2
    try:
        if flags & 0x8000:
            off += 1 + raw[off]
        if flags & 0x4000:
            off += 1 + raw[off]
        if flags & FLAG_HEADERS:
            off += 4 + int.from_bytes(raw[off : off + 4], "big")
        return raw[off]
    except IndexError:
        return 0
