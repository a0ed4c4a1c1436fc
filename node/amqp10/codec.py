"""The AMQP 1.0 type system: encoding and decoding of every primitive, described and compound type.

Values decode to plain Python where the type is unambiguous (null → None, boolean → bool, long → int,
double → float, string → str, binary → bytes, list → list, map → dict, uuid → uuid.UUID) and to thin
subclasses where AMQP has several types for one Python type (`UInt(int)`, `Symbol(str)`, ...), so that
a decoded value encodes back to the same type. Described values decode to `Described`, arrays to
`Array`.

Decoding is defensive: every read is bounds-checked, sizes and counts are checked against the bytes
that hold them, nesting is bounded, and any inconsistency raises `DecodeError` (the connection turns
it into `amqp:decode-error`). Nothing else escapes `decode`.
"""

from __future__ import annotations

import struct
import uuid
from typing import Any

MAX_DEPTH = 64


class DecodeError(Exception):
    """The bytes do not form a valid AMQP 1.0 value."""


# -- types without a Python twin ------------------------------------------------------------------


class UByte(int):
    __slots__ = ()


class UShort(int):
    __slots__ = ()


class UInt(int):
    __slots__ = ()


class ULong(int):
    __slots__ = ()


class Byte(int):
    __slots__ = ()


class Short(int):
    __slots__ = ()


class Int(int):
    __slots__ = ()


class Long(int):
    """A long that must stay a long (plain ints encode as long too; this is for symmetry)."""

    __slots__ = ()


class Timestamp(int):
    """Milliseconds since the Unix epoch."""

    __slots__ = ()


class Float(float):
    """A 32-bit float (plain floats are doubles)."""

    __slots__ = ()


class Symbol(str):
    __slots__ = ()


class Char(str):
    __slots__ = ()


class Decimal32(bytes):
    __slots__ = ()


class Decimal64(bytes):
    __slots__ = ()


class Decimal128(bytes):
    __slots__ = ()


class Described:
    __slots__ = ("descriptor", "value")

    def __init__(self, descriptor: Any, value: Any) -> None:
        self.descriptor = descriptor
        self.value = value

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Described)
            and _same(self.descriptor, other.descriptor)
            and _same(self.value, other.value)
        )

    def __hash__(self) -> int:
        return hash(("described", self.descriptor))

    def __repr__(self) -> str:
        return f"Described({self.descriptor!r}, {self.value!r})"


class Array:
    """An AMQP array: `code` is the element constructor (a fixed-width form), `descriptor` is set
    for arrays of described values."""

    __slots__ = ("code", "items", "descriptor")

    def __init__(self, code: int, items: list[Any], descriptor: Any = None) -> None:
        self.code = code
        self.items = items
        self.descriptor = descriptor

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Array)
            and _same(self.items, other.items)
            and _same(self.descriptor, other.descriptor)
            and _ARRAY_FAMILY.get(self.code, self.code) == _ARRAY_FAMILY.get(other.code, other.code)
        )

    def __hash__(self) -> int:
        return hash(("array", len(self.items)))

    def __repr__(self) -> str:
        return f"Array(0x{self.code:02x}, {self.items!r})"


def _same(a: Any, b: Any) -> bool:
    """Equality that also compares AMQP types (UInt(1) is not ULong(1)); NaN equals NaN."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return a == b or (a != a and b != b)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        if len(a) != len(b):
            return False
        bi = list(b.items())
        return all(
            _same(k1, k2) and _same(v1, v2)
            for (k1, v1), (k2, v2) in zip(a.items(), bi, strict=True)
        )
    return a == b


same = _same

# -- decoding -------------------------------------------------------------------------------------

_B = struct.Struct(">B").unpack_from
_b = struct.Struct(">b").unpack_from
_H = struct.Struct(">H").unpack_from
_h = struct.Struct(">h").unpack_from
_I = struct.Struct(">I").unpack_from
_i = struct.Struct(">i").unpack_from
_Q = struct.Struct(">Q").unpack_from
_q = struct.Struct(">q").unpack_from
_f = struct.Struct(">f").unpack_from
_d = struct.Struct(">d").unpack_from


def decode(buf: bytes, off: int = 0) -> tuple[Any, int]:
    """Decode one value at `off`; returns (value, offset after it). Raises only DecodeError."""
    try:
        return _decode(buf, off, 0)
    except DecodeError:
        raise
    except (struct.error, IndexError, ValueError, TypeError, OverflowError, RecursionError) as e:
        raise DecodeError(f"malformed value: {e}") from None


def _decode(buf: bytes, off: int, depth: int) -> tuple[Any, int]:
    code = buf[off]
    if code == 0:
        if depth > MAX_DEPTH:
            raise DecodeError("values nested too deeply")
        descriptor, off = _decode(buf, off + 1, depth + 1)
        if isinstance(descriptor, (Described, list, dict, Array)):
            raise DecodeError("a descriptor must be a ulong or a symbol")
        value, off = _decode(buf, off, depth + 1)
        return Described(descriptor, value), off
    dec = _PAYLOAD.get(code)
    if dec is None:
        raise DecodeError(f"unknown type code 0x{code:02x}")
    return dec(buf, off + 1, depth)


def _end(buf: bytes, off: int, n: int) -> int:
    end = off + n
    if end > len(buf):
        raise DecodeError("value runs past the end of its frame")
    return end


def _fixed(n: int, conv: Any) -> Any:
    def dec(buf: bytes, off: int, depth: int) -> tuple[Any, int]:
        end = _end(buf, off, n)
        return conv(buf, off), end

    return dec


def _const(value: Any) -> Any:
    def dec(buf: bytes, off: int, depth: int) -> tuple[Any, int]:
        return value, off

    return dec


def _var(width: int, conv: Any) -> Any:
    unpack = _B if width == 1 else _I

    def dec(buf: bytes, off: int, depth: int) -> tuple[Any, int]:
        (n,) = unpack(buf, off)
        start = off + width
        end = _end(buf, start, n)
        return conv(buf[start:end]), end

    return dec


def _utf8(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise DecodeError("string is not valid UTF-8") from None


def _ascii_symbol(raw: bytes) -> Symbol:
    try:
        return Symbol(raw.decode("ascii"))
    except UnicodeDecodeError:
        raise DecodeError("symbol is not ASCII") from None


def _char(buf: bytes, off: int) -> Char:
    cp = _I(buf, off)[0]
    if cp > 0x10FFFF:
        raise DecodeError("char out of range")
    return Char(chr(cp))


def _compound(width: int, is_map: bool) -> Any:
    unpack = _B if width == 1 else _I

    def dec(buf: bytes, off: int, depth: int) -> tuple[Any, int]:
        if depth > MAX_DEPTH:
            raise DecodeError("values nested too deeply")
        (size,) = unpack(buf, off)
        (count,) = unpack(buf, off + width)
        if size < width:
            raise DecodeError("compound size smaller than its count field")
        start = off + 2 * width
        end = _end(buf, off + width, size)
        if count > size:
            raise DecodeError("compound count larger than its size")
        items: list[Any] = []
        p = start
        for _ in range(count):
            if p >= end:
                raise DecodeError("compound holds fewer values than its count")
            v, p = _decode(buf, p, depth + 1)
            items.append(v)
        if p != end:
            raise DecodeError("compound size does not match its contents")
        if not is_map:
            return items, end
        if count % 2:
            raise DecodeError("map with an odd number of elements")
        m: dict[Any, Any] = {}
        for k in range(0, count, 2):
            key = items[k]
            if isinstance(key, (list, dict, Array, Described)):
                raise DecodeError("map key of a compound type")
            m[key] = items[k + 1]
        return m, end

    return dec


def _array(width: int) -> Any:
    unpack = _B if width == 1 else _I

    def dec(buf: bytes, off: int, depth: int) -> tuple[Any, int]:
        if depth > MAX_DEPTH:
            raise DecodeError("values nested too deeply")
        (size,) = unpack(buf, off)
        (count,) = unpack(buf, off + width)
        if size < width:
            raise DecodeError("array size smaller than its count field")
        end = _end(buf, off + width, size)
        if count > size:
            raise DecodeError("array count larger than its size")
        p = off + 2 * width
        if p >= end:
            raise DecodeError("array without an element constructor")
        code = buf[p]
        p += 1
        descriptor = None
        if code == 0:
            descriptor, p = _decode(buf, p, depth + 1)
            if isinstance(descriptor, (Described, list, dict, Array)):
                raise DecodeError("a descriptor must be a ulong or a symbol")
            code = buf[p]
            p += 1
        elem = _PAYLOAD.get(code)
        if elem is None or code in (0x00,):
            raise DecodeError(f"unknown array element type 0x{code:02x}")
        items: list[Any] = []
        for _ in range(count):
            v, p = elem(buf, p, depth + 1)
            if descriptor is not None:
                v = Described(descriptor, v)
            items.append(v)
        if p != end:
            raise DecodeError("array size does not match its contents")
        return Array(code, items, descriptor), end

    return dec


def _uuid(buf: bytes, off: int) -> uuid.UUID:
    return uuid.UUID(bytes=bytes(buf[off : off + 16]))


_PAYLOAD: dict[int, Any] = {
    0x40: _const(None),
    0x41: _const(True),
    0x42: _const(False),
    0x56: _fixed(1, lambda b, o: _bool(b[o])),
    0x50: _fixed(1, lambda b, o: UByte(b[o])),
    0x60: _fixed(2, lambda b, o: UShort(_H(b, o)[0])),
    0x70: _fixed(4, lambda b, o: UInt(_I(b, o)[0])),
    0x52: _fixed(1, lambda b, o: UInt(b[o])),
    0x43: _const(UInt(0)),
    0x80: _fixed(8, lambda b, o: ULong(_Q(b, o)[0])),
    0x53: _fixed(1, lambda b, o: ULong(b[o])),
    0x44: _const(ULong(0)),
    0x51: _fixed(1, lambda b, o: Byte(_b(b, o)[0])),
    0x61: _fixed(2, lambda b, o: Short(_h(b, o)[0])),
    0x71: _fixed(4, lambda b, o: Int(_i(b, o)[0])),
    0x54: _fixed(1, lambda b, o: Int(_b(b, o)[0])),
    0x81: _fixed(8, lambda b, o: _q(b, o)[0]),
    0x55: _fixed(1, lambda b, o: _b(b, o)[0]),
    0x72: _fixed(4, lambda b, o: Float(_f(b, o)[0])),
    0x82: _fixed(8, lambda b, o: _d(b, o)[0]),
    0x74: _fixed(4, lambda b, o: Decimal32(b[o : o + 4])),
    0x84: _fixed(8, lambda b, o: Decimal64(b[o : o + 8])),
    0x94: _fixed(16, lambda b, o: Decimal128(b[o : o + 16])),
    0x73: _fixed(4, _char),
    0x83: _fixed(8, lambda b, o: Timestamp(_q(b, o)[0])),
    0x98: _fixed(16, _uuid),
    0xA0: _var(1, bytes),
    0xB0: _var(4, bytes),
    0xA1: _var(1, _utf8),
    0xB1: _var(4, _utf8),
    0xA3: _var(1, _ascii_symbol),
    0xB3: _var(4, _ascii_symbol),
    0x45: _const(None),  # replaced below: an empty list must be a fresh object
    0xC0: _compound(1, False),
    0xD0: _compound(4, False),
    0xC1: _compound(1, True),
    0xD1: _compound(4, True),
    0xE0: _array(1),
    0xF0: _array(4),
}


def _bool(b: int) -> bool:
    if b > 1:
        raise DecodeError("boolean octet neither 0 nor 1")
    return b == 1


def _empty_list(buf: bytes, off: int, depth: int) -> tuple[list, int]:
    return [], off


_PAYLOAD[0x45] = _empty_list

# Codes of one family compare equal as array element types.
_ARRAY_FAMILY = {
    0x52: 0x70,
    0x43: 0x70,
    0x53: 0x80,
    0x44: 0x80,
    0x54: 0x71,
    0x55: 0x81,
    0xA0: 0xB0,
    0xA1: 0xB1,
    0xA3: 0xB3,
    0xC0: 0xD0,
    0x45: 0xD0,
    0xC1: 0xD1,
    0xE0: 0xF0,
    0x41: 0x56,
    0x42: 0x56,
}

# -- encoding -------------------------------------------------------------------------------------

_pB = struct.Struct(">B").pack
_pH = struct.Struct(">H").pack
_pI = struct.Struct(">I").pack
_pQ = struct.Struct(">Q").pack
_pb = struct.Struct(">b").pack
_ph = struct.Struct(">h").pack
_pi = struct.Struct(">i").pack
_pq = struct.Struct(">q").pack
_pf = struct.Struct(">f").pack
_pd = struct.Struct(">d").pack


def encode(value: Any) -> bytes:
    """Encode one value in its most compact form."""
    t = type(value)
    enc = _ENCODERS.get(t)
    if enc is not None:
        return enc(value)
    if value is None:
        return b"\x40"
    enc_method = getattr(value, "encode_amqp", None)
    if enc_method is not None:
        return enc_method()
    for base, enc in _ENCODERS.items():
        if isinstance(value, base):
            return enc(value)
    if isinstance(value, tuple):
        return _enc_list(list(value))
    raise TypeError(f"cannot encode {t.__name__} as an AMQP 1.0 value")


def _enc_str(v: str) -> bytes:
    raw = v.encode("utf-8")
    n = len(raw)
    return (b"\xa1" + _pB(n) if n < 256 else b"\xb1" + _pI(n)) + raw


def _enc_symbol(v: str) -> bytes:
    raw = v.encode("ascii")
    n = len(raw)
    return (b"\xa3" + _pB(n) if n < 256 else b"\xb3" + _pI(n)) + raw


def _enc_binary(v: bytes) -> bytes:
    n = len(v)
    return (b"\xa0" + _pB(n) if n < 256 else b"\xb0" + _pI(n)) + bytes(v)


def _enc_bool(v: bool) -> bytes:
    return b"\x41" if v else b"\x42"


def _enc_uint(v: int) -> bytes:
    if v == 0:
        return b"\x43"
    if v < 256:
        return b"\x52" + _pB(v)
    return b"\x70" + _pI(v)


def _enc_ulong(v: int) -> bytes:
    if v == 0:
        return b"\x44"
    if v < 256:
        return b"\x53" + _pB(v)
    return b"\x80" + _pQ(v)


def _enc_int(v: int) -> bytes:
    if -128 <= v < 128:
        return b"\x54" + _pb(v)
    return b"\x71" + _pi(v)


def _enc_long(v: int) -> bytes:
    if -128 <= v < 128:
        return b"\x55" + _pb(v)
    return b"\x81" + _pq(v)


def _compound_bytes(items: list[bytes], count: int, c8: int, c32: int) -> bytes:
    body = b"".join(items)
    size = len(body) + 1
    if size < 256 and count < 256:
        return bytes((c8, size, count)) + body
    return bytes((c32,)) + _pI(len(body) + 4) + _pI(count) + body


def _enc_list(v: list) -> bytes:
    if not v:
        return b"\x45"
    return _compound_bytes([encode(x) for x in v], len(v), 0xC0, 0xD0)


def _enc_map(v: dict) -> bytes:
    parts: list[bytes] = []
    for k, x in v.items():
        parts.append(encode(k))
        parts.append(encode(x))
    return _compound_bytes(parts, len(parts), 0xC1, 0xD1)


def _enc_described(v: Described) -> bytes:
    return b"\x00" + encode(v.descriptor) + encode(v.value)


# Element encoders for arrays: the payload only (the constructor is written once).
def _elem(code: int, value: Any) -> bytes:
    if code == 0x40 or code == 0x45:
        return b""
    if code in (0x41, 0x42):
        return b""
    if code == 0x56:
        return b"\x01" if value else b"\x00"
    if code == 0x50:
        return _pB(value)
    if code == 0x60:
        return _pH(value)
    if code == 0x70:
        return _pI(value)
    if code == 0x52:
        return _pB(value)
    if code == 0x43 or code == 0x44:
        return b""
    if code == 0x80:
        return _pQ(value)
    if code == 0x53:
        return _pB(value)
    if code == 0x51:
        return _pb(value)
    if code == 0x61:
        return _ph(value)
    if code == 0x71:
        return _pi(value)
    if code == 0x54 or code == 0x55:
        return _pb(value)
    if code == 0x81 or code == 0x83:
        return _pq(value)
    if code == 0x72:
        return _pf(value)
    if code == 0x82:
        return _pd(value)
    if code in (0x74, 0x84, 0x94):
        return bytes(value)
    if code == 0x73:
        return _pI(ord(value))
    if code == 0x98:
        return value.bytes
    if code in (0xA0, 0xA1, 0xA3):
        raw = value if code == 0xA0 else value.encode("utf-8" if code == 0xA1 else "ascii")
        return _pB(len(raw)) + bytes(raw)
    if code in (0xB0, 0xB1, 0xB3):
        raw = value if code == 0xB0 else value.encode("utf-8" if code == 0xB1 else "ascii")
        return _pI(len(raw)) + bytes(raw)
    # Compound elements: the full encoding minus the constructor byte, in the 32-bit form.
    if code in (0xD0, 0xC0):
        full = _to32(_enc_list(list(value)), 0xD0)
        return full[1:]
    if code in (0xD1, 0xC1):
        full = _to32(_enc_map(value), 0xD1)
        return full[1:]
    if code in (0xF0, 0xE0):
        full = _to32(_enc_array(value), 0xF0)
        return full[1:]
    raise TypeError(f"cannot encode array elements of type 0x{code:02x}")


def _to32(encoded: bytes, c32: int) -> bytes:
    """Re-express a compound encoding in its 32-bit form (array elements share one width)."""
    code = encoded[0]
    if code == c32:
        return encoded
    if code == 0x45:
        return bytes((c32,)) + _pI(4) + _pI(0)
    size, count = encoded[1], encoded[2]
    body = encoded[3:]
    return bytes((c32,)) + _pI(size - 1 + 4) + _pI(count) + body


def _enc_array(v: Array) -> bytes:
    code = v.code
    # Use the fixed-width form of a family for elements that do not fit a compact form.
    if code in (0x52, 0x43):
        code = 0x70
    elif code in (0x53, 0x44):
        code = 0x80
    elif code == 0x54:
        code = 0x71
    elif code == 0x55:
        code = 0x81
    elif code in (0x41, 0x42):
        code = 0x56
    elif code in (0xC0, 0x45):
        code = 0xD0
    elif code == 0xC1:
        code = 0xD1
    elif code == 0xE0:
        code = 0xF0
    elif code in (0xA0, 0xA1, 0xA3):
        items = v.items
        raw_len = max(
            (
                len(x if code == 0xA0 else x.encode("utf-8" if code == 0xA1 else "ascii"))
                for x in (i.value if isinstance(i, Described) else i for i in items)
            ),
            default=0,
        )
        if raw_len > 255:
            code += 0x10
    ctor = bytes((code,))
    if v.descriptor is not None:
        ctor = b"\x00" + encode(v.descriptor) + ctor
    parts = [_elem(code, i.value if isinstance(i, Described) else i) for i in v.items]
    body = ctor + b"".join(parts)
    count = len(v.items)
    if len(body) + 1 < 256 and count < 256:
        return bytes((0xE0, len(body) + 1, count)) + body
    return b"\xf0" + _pI(len(body) + 4) + _pI(count) + body


_ENCODERS: dict[type, Any] = {
    str: _enc_str,
    bool: _enc_bool,
    int: _enc_long,
    Long: _enc_long,
    float: lambda v: b"\x82" + _pd(v),
    bytes: _enc_binary,
    bytearray: _enc_binary,
    memoryview: lambda v: _enc_binary(bytes(v)),
    Symbol: _enc_symbol,
    UInt: _enc_uint,
    ULong: _enc_ulong,
    UByte: lambda v: b"\x50" + _pB(v),
    UShort: lambda v: b"\x60" + _pH(v),
    Byte: lambda v: b"\x51" + _pb(v),
    Short: lambda v: b"\x61" + _ph(v),
    Int: _enc_int,
    Timestamp: lambda v: b"\x83" + _pq(v),
    Float: lambda v: b"\x72" + _pf(v),
    Char: lambda v: b"\x73" + _pI(ord(v)),
    Decimal32: lambda v: b"\x74" + bytes(v),
    Decimal64: lambda v: b"\x84" + bytes(v),
    Decimal128: lambda v: b"\x94" + bytes(v),
    uuid.UUID: lambda v: b"\x98" + v.bytes,
    list: _enc_list,
    dict: _enc_map,
    Described: _enc_described,
    Array: _enc_array,
}


def symbol_array(items: list[str]) -> Array:
    return Array(0xA3, [Symbol(s) for s in items])


# -- skipping (for fast paths that only need a value's extent) ------------------------------------

_FIXED_WIDTH = {
    **{c: 0 for c in (0x40, 0x41, 0x42, 0x43, 0x44, 0x45)},
    **{c: 1 for c in (0x50, 0x51, 0x52, 0x53, 0x54, 0x55, 0x56)},
    **{c: 2 for c in (0x60, 0x61)},
    **{c: 4 for c in (0x70, 0x71, 0x72, 0x73, 0x74)},
    **{c: 8 for c in (0x80, 0x81, 0x82, 0x83, 0x84)},
    **{c: 16 for c in (0x94, 0x98)},
}


def skip(buf: bytes, off: int) -> int:
    """The offset after the value at `off`, without decoding it (its contents are not checked)."""
    try:
        code = buf[off]
        if code == 0:
            return skip(buf, skip(buf, off + 1))
        w = _FIXED_WIDTH.get(code)
        if w is not None:
            end = off + 1 + w
        elif code in (0xA0, 0xA1, 0xA3, 0xC0, 0xC1, 0xE0):
            end = off + 2 + buf[off + 1]
        elif code in (0xB0, 0xB1, 0xB3, 0xD0, 0xD1, 0xF0):
            end = off + 5 + _I(buf, off + 1)[0]
        else:
            raise DecodeError(f"unknown type code 0x{code:02x}")
    except (IndexError, struct.error, RecursionError):
        raise DecodeError("value runs past the end of its frame") from None
    if end > len(buf):
        raise DecodeError("value runs past the end of its frame")
    return end
