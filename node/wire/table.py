"""Encoding and decoding of AMQP field values and tables (0-9-1 with RabbitMQ's errata type letters).

The same encoding is the core's: message headers (the headers exchange, x-death), queue and binding
arguments and the forwarding packer use it whichever protocol a client speaks.

Decoding is defensive: every read is bounds-checked by struct or by an explicit length test, and any
inconsistency raises `DecodeError`, which the connection turns into 501/502 without touching other
connections. Values decode to plain Python types; the few that have no native twin (decimal, void,
byte arrays, timestamps) use small wrapper types so that re-encoding gives back the same type letter.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

_unpack_B = struct.Struct(">B").unpack_from
_unpack_b = struct.Struct(">b").unpack_from
_unpack_H = struct.Struct(">H").unpack_from
_unpack_h = struct.Struct(">h").unpack_from
_unpack_I = struct.Struct(">I").unpack_from
_unpack_i = struct.Struct(">i").unpack_from
_unpack_Q = struct.Struct(">Q").unpack_from
_unpack_q = struct.Struct(">q").unpack_from
_unpack_f = struct.Struct(">f").unpack_from
_unpack_d = struct.Struct(">d").unpack_from

_pack_B = struct.Struct(">B").pack
_pack_H = struct.Struct(">H").pack
_pack_I = struct.Struct(">I").pack
_pack_Q = struct.Struct(">Q").pack

MAX_TABLE_DEPTH = 32


class DecodeError(Exception):
    """The bytes do not form a valid AMQP field value, table or property list."""


@dataclass(frozen=True, slots=True)
class Timestamp:
    """A 'T' field value: seconds since the epoch."""

    seconds: int


@dataclass(frozen=True, slots=True)
class ByteArray:
    """An 'x' field value (RabbitMQ's byte array)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Int:
    """An integer that must keep its exact wire type letter (b B s u I i l) on re-encoding."""

    kind: str
    value: int

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Int):
            return self.value == other.value
        if isinstance(other, int) and not isinstance(other, bool):
            return self.value == other
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.value)

    def __int__(self) -> int:
        return self.value

    def __index__(self) -> int:
        return self.value


def as_int(value: Any) -> int | None:
    """The integer in a decoded field value, or None when it is not an integer type."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, Int):
        return value.value
    return None


# --- decoding -------------------------------------------------------------------------------


def decode_shortstr(buf: bytes | memoryview, off: int) -> tuple[str, int]:
    try:
        n = buf[off]
    except IndexError:
        raise DecodeError("truncated shortstr")
    end = off + 1 + n
    if end > len(buf):
        raise DecodeError("truncated shortstr")
    raw = bytes(buf[off + 1 : end])
    try:
        return raw.decode("utf-8"), end
    except UnicodeDecodeError:
        raise DecodeError("shortstr is not valid UTF-8")


def decode_longstr_bytes(buf: bytes | memoryview, off: int) -> tuple[bytes, int]:
    try:
        (n,) = _unpack_I(buf, off)
    except struct.error:
        raise DecodeError("truncated longstr")
    end = off + 4 + n
    if end > len(buf):
        raise DecodeError("truncated longstr")
    return bytes(buf[off + 4 : end]), end


def _longstr_value(raw: bytes) -> str | bytes:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw


def decode_table(buf: bytes | memoryview, off: int, depth: int = 0) -> tuple[dict[str, Any], int]:
    if depth > MAX_TABLE_DEPTH:
        raise DecodeError("field table nested too deeply")
    try:
        (size,) = _unpack_I(buf, off)
    except struct.error:
        raise DecodeError("truncated field table")
    off += 4
    end = off + size
    if end > len(buf):
        raise DecodeError("field table longer than its frame")
    table: dict[str, Any] = {}
    while off < end:
        key, off = decode_shortstr(buf, off)
        value, off = decode_value(buf, off, depth)
        table[key] = value
    if off != end:
        raise DecodeError("field table size does not match its contents")
    return table, end


def decode_array(buf: bytes | memoryview, off: int, depth: int = 0) -> tuple[list[Any], int]:
    if depth > MAX_TABLE_DEPTH:
        raise DecodeError("field array nested too deeply")
    try:
        (size,) = _unpack_I(buf, off)
    except struct.error:
        raise DecodeError("truncated field array")
    off += 4
    end = off + size
    if end > len(buf):
        raise DecodeError("field array longer than its frame")
    items: list[Any] = []
    while off < end:
        value, off = decode_value(buf, off, depth)
        items.append(value)
    if off != end:
        raise DecodeError("field array size does not match its contents")
    return items, end


def decode_value(buf: bytes | memoryview, off: int, depth: int = 0) -> tuple[Any, int]:
    try:
        kind = chr(buf[off])
    except IndexError:
        raise DecodeError("truncated field value")
    off += 1
    try:
        if kind == "S":
            raw, off = decode_longstr_bytes(buf, off)
            return _longstr_value(raw), off
        if kind == "I":
            return _unpack_i(buf, off)[0], off + 4
        if kind == "t":
            return buf[off] != 0, off + 1
        if kind == "F":
            return decode_table(buf, off, depth + 1)
        if kind == "l":
            return _unpack_q(buf, off)[0], off + 8
        if kind == "A":
            return decode_array(buf, off, depth + 1)
        if kind == "b":
            return Int("b", _unpack_b(buf, off)[0]), off + 1
        if kind == "B":
            return Int("B", _unpack_B(buf, off)[0]), off + 1
        if kind == "s":
            return Int("s", _unpack_h(buf, off)[0]), off + 2
        if kind == "u":
            return Int("u", _unpack_H(buf, off)[0]), off + 2
        if kind == "i":
            return Int("i", _unpack_I(buf, off)[0]), off + 4
        if kind == "L":
            return Int("L", _unpack_Q(buf, off)[0]), off + 8
        if kind == "f":
            return _unpack_f(buf, off)[0], off + 4
        if kind == "d":
            return _unpack_d(buf, off)[0], off + 8
        if kind == "D":
            scale = buf[off]
            (raw,) = _unpack_i(buf, off + 1)
            return Decimal(raw).scaleb(-scale), off + 5
        if kind == "T":
            return Timestamp(_unpack_Q(buf, off)[0]), off + 8
        if kind == "V":
            return None, off
        if kind == "x":
            raw, off = decode_longstr_bytes(buf, off)
            return ByteArray(raw), off
    except (struct.error, IndexError):
        raise DecodeError(f"truncated field value of type {kind!r}")
    raise DecodeError(f"unknown field value type {kind!r}")


# --- encoding -------------------------------------------------------------------------------


def encode_shortstr(value: str | bytes) -> bytes:
    raw = value.encode("utf-8") if isinstance(value, str) else value
    if len(raw) > 255:
        raise ValueError("shortstr longer than 255 bytes")
    return _pack_B(len(raw)) + raw


def encode_longstr(value: str | bytes) -> bytes:
    raw = value.encode("utf-8") if isinstance(value, str) else value
    return _pack_I(len(raw)) + raw


def encode_table(table: dict[str, Any] | None) -> bytes:
    if not table:
        return b"\x00\x00\x00\x00"
    parts = []
    for key, value in table.items():
        parts.append(encode_shortstr(key))
        parts.append(encode_value(value))
    body = b"".join(parts)
    return _pack_I(len(body)) + body


def encode_value(value: Any) -> bytes:
    if isinstance(value, str):
        raw = value.encode("utf-8")
        return b"S" + _pack_I(len(raw)) + raw
    if isinstance(value, bool):
        return b"t\x01" if value else b"t\x00"
    if isinstance(value, int):
        if -(2**31) <= value < 2**31:
            return b"I" + struct.pack(">i", value)
        return b"l" + struct.pack(">q", value)
    if isinstance(value, Int):
        fmt = {"b": ">b", "B": ">B", "s": ">h", "u": ">H", "i": ">I", "l": ">q", "L": ">Q"}[
            value.kind
        ]
        return value.kind.encode() + struct.pack(fmt, value.value)
    if isinstance(value, bytes):
        return b"S" + _pack_I(len(value)) + value
    if isinstance(value, dict):
        return b"F" + encode_table(value)
    if isinstance(value, (list, tuple)):
        body = b"".join(encode_value(v) for v in value)
        return b"A" + _pack_I(len(body)) + body
    if isinstance(value, float):
        return b"d" + struct.pack(">d", value)
    if value is None:
        return b"V"
    if isinstance(value, Timestamp):
        return b"T" + _pack_Q(value.seconds)
    if isinstance(value, ByteArray):
        return b"x" + _pack_I(len(value.data)) + value.data
    if isinstance(value, Decimal):
        sign, digits, exponent = value.as_tuple()
        scale = -int(exponent) if isinstance(exponent, int) and exponent < 0 else 0
        raw = int(value.scaleb(scale))
        return b"D" + _pack_B(scale) + struct.pack(">i", raw)
    raise TypeError(f"cannot encode {type(value).__name__} as an AMQP field value")
