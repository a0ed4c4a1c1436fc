"""AMQP 1.0 composite types: performatives, SASL frames, terminus, error and delivery states.

Each composite is a class with a FIELDS table (name, kind, mandatory) in the spec's order; the table
drives both decoding (with a type check of every present field, so the state machine never sees a
string where it expects a handle) and encoding (with trailing nulls trimmed). Descriptors are
normalised to their numeric codes whether they arrived as ulongs or symbols.
"""

from __future__ import annotations

from typing import Any

from .codec import (
    Array,
    DecodeError,
    Described,
    Symbol,
    _enc_binary,
    _enc_bool,
    _enc_list,
    _enc_map,
    _enc_str,
    _enc_symbol,
    _enc_uint,
    _enc_ulong,
    _pB,
    _pH,
    decode,
    encode,
)


class FieldError(DecodeError):
    """A field of a composite has the wrong type or a mandatory one is missing."""


NAMES = {
    "amqp:open:list": 0x10,
    "amqp:begin:list": 0x11,
    "amqp:attach:list": 0x12,
    "amqp:flow:list": 0x13,
    "amqp:transfer:list": 0x14,
    "amqp:disposition:list": 0x15,
    "amqp:detach:list": 0x16,
    "amqp:end:list": 0x17,
    "amqp:close:list": 0x18,
    "amqp:error:list": 0x1D,
    "amqp:received:list": 0x23,
    "amqp:accepted:list": 0x24,
    "amqp:rejected:list": 0x25,
    "amqp:released:list": 0x26,
    "amqp:modified:list": 0x27,
    "amqp:source:list": 0x28,
    "amqp:target:list": 0x29,
    "amqp:delete-on-close:list": 0x2B,
    "amqp:delete-on-no-links:list": 0x2C,
    "amqp:delete-on-no-messages:list": 0x2D,
    "amqp:delete-on-no-links-or-messages:list": 0x2E,
    "amqp:coordinator:list": 0x30,
    "amqp:sasl-mechanisms:list": 0x40,
    "amqp:sasl-init:list": 0x41,
    "amqp:sasl-challenge:list": 0x42,
    "amqp:sasl-response:list": 0x43,
    "amqp:sasl-outcome:list": 0x44,
    "amqp:header:list": 0x70,
    "amqp:delivery-annotations:map": 0x71,
    "amqp:message-annotations:map": 0x72,
    "amqp:properties:list": 0x73,
    "amqp:application-properties:map": 0x74,
    "amqp:data:binary": 0x75,
    "amqp:amqp-sequence:list": 0x76,
    "amqp:amqp-value:*": 0x77,
    "amqp:footer:map": 0x78,
}


def descriptor_code(d: Any) -> int | None:
    if isinstance(d, int) and not isinstance(d, bool):
        return int(d)
    if isinstance(d, str):
        return NAMES.get(d)
    return None


# -- field kinds ----------------------------------------------------------------------------------


def _is_uint(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**32


def _is_ulong(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**64


def _symbols(v: Any) -> Any:
    if isinstance(v, str):
        return [v]
    if isinstance(v, Array) and all(isinstance(x, str) for x in v.items):
        return list(v.items)
    if isinstance(v, list) and all(isinstance(x, str) for x in v):
        return v
    raise ValueError


def _composite(v: Any) -> Any:
    if isinstance(v, Described):
        code = descriptor_code(v.descriptor)
        cls = COMPOSITES.get(code) if code is not None else None
        if cls is not None and isinstance(v.value, list):
            return cls.from_list(v.value)
        return v  # an unknown or unusual composite, left to the caller to refuse
    raise ValueError


def _check(kind: str, v: Any) -> Any:
    """Validate (and normalise) a decoded field value; raises ValueError."""
    if kind in ("uint", "handle", "seq", "ms"):
        if _is_uint(v):
            return int(v)
    elif kind == "ulong":
        if _is_ulong(v):
            return int(v)
    elif kind == "ushort":
        if _is_uint(v) and v < 65536:
            return int(v)
    elif kind == "ubyte":
        if _is_uint(v) and v < 256:
            return int(v)
    elif kind == "bool":
        if isinstance(v, bool):
            return v
    elif kind == "string" or kind == "symbol":
        if isinstance(v, str):
            return str(v)
    elif kind == "symbols":
        return _symbols(v)
    elif kind == "binary":
        if isinstance(v, bytes):
            return v
    elif kind == "fields":
        if isinstance(v, dict):
            return v
    elif kind == "composite":
        return _composite(v)
    elif kind == "any":
        return v
    raise ValueError


def _enc_field(kind: str, v: Any) -> bytes:
    if v is None:
        return b"\x40"
    if kind in ("uint", "handle", "seq", "ms"):
        return _enc_uint(v)
    if kind == "ulong":
        return _enc_ulong(v)
    if kind == "ushort":
        return b"\x60" + _pH(v)
    if kind == "ubyte":
        return b"\x50" + _pB(v)
    if kind == "bool":
        return _enc_bool(v)
    if kind == "string":
        return _enc_str(v)
    if kind == "symbol":
        return _enc_symbol(v)
    if kind == "symbols":
        if isinstance(v, str):
            return _enc_symbol(v)
        return encode(Array(0xA3, [Symbol(s) for s in v]))
    if kind == "binary":
        return _enc_binary(v)
    if kind == "fields":
        return _enc_map({Symbol(k) if type(k) is str else k: x for k, x in v.items()})
    return encode(v)


class Composite:
    __slots__: tuple[str, ...] = ()
    CODE = 0
    FIELDS: tuple[tuple[str, str, bool], ...] = ()
    NAME = ""

    def __init__(self, **kw: Any) -> None:
        for name, _kind, _mandatory in self.FIELDS:
            setattr(self, name, kw.pop(name, None))
        if kw:
            raise TypeError(f"unknown fields for {self.NAME}: {sorted(kw)}")

    @classmethod
    def from_list(cls, values: list[Any]) -> Any:
        obj = cls.__new__(cls)
        fields = cls.FIELDS
        if len(values) > len(fields):
            # Later versions may add fields; the extras are ignored as the spec asks.
            values = values[: len(fields)]
        n = len(values)
        for i, (name, kind, mandatory) in enumerate(fields):
            v = values[i] if i < n else None
            if v is None:
                if mandatory:
                    raise FieldError(f"{cls.NAME}: mandatory field '{name}' is missing")
            else:
                try:
                    v = _check(kind, v)
                except ValueError:
                    raise FieldError(
                        f"{cls.NAME}: field '{name}' has the wrong type ({type(v).__name__})"
                    ) from None
            setattr(obj, name, v)
        return obj

    def encode_amqp(self) -> bytes:
        parts = [_enc_field(kind, getattr(self, name)) for name, kind, _ in self.FIELDS]
        while parts and parts[-1] == b"\x40":
            parts.pop()
        return b"\x00\x53" + _pB(self.CODE) + _list_of_encoded(parts)

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{n}={getattr(self, n)!r}" for n, _, _ in self.FIELDS if getattr(self, n) is not None
        )
        return f"{type(self).__name__}({shown})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and all(
            getattr(self, n) == getattr(other, n) for n, _, _ in self.FIELDS
        )

    __hash__ = None  # type: ignore[assignment]


def _list_of_encoded(parts: list[bytes]) -> bytes:
    if not parts:
        return b"\x45"
    body = b"".join(parts)
    size = len(body) + 1
    count = len(parts)
    if size < 256:
        return bytes((0xC0, size, count)) + body
    return b"\xd0" + (len(body) + 4).to_bytes(4, "big") + count.to_bytes(4, "big") + body


def _define(name: str, code: int, fields: str) -> type:
    """fields: 'name:kind[!]' separated by spaces; '!' marks a mandatory field."""
    table = []
    for spec in fields.split():
        fname, kind = spec.split(":")
        mandatory = kind.endswith("!")
        table.append((fname.replace("-", "_"), kind.rstrip("!"), mandatory))
    cls_name = "".join(p.capitalize() for p in name.split("-"))
    cls = type(
        cls_name,
        (Composite,),
        {
            "__slots__": tuple(f[0] for f in table),
            "CODE": code,
            "FIELDS": tuple(table),
            "NAME": name,
        },
    )
    COMPOSITES[code] = cls
    return cls


COMPOSITES: dict[int, type] = {}

Open = _define(
    "open",
    0x10,
    "container-id:string! hostname:string max-frame-size:uint channel-max:ushort "
    "idle-time-out:ms outgoing-locales:symbols incoming-locales:symbols "
    "offered-capabilities:symbols desired-capabilities:symbols properties:fields",
)
Begin = _define(
    "begin",
    0x11,
    "remote-channel:ushort next-outgoing-id:seq! incoming-window:uint! outgoing-window:uint! "
    "handle-max:handle offered-capabilities:symbols desired-capabilities:symbols properties:fields",
)
Attach = _define(
    "attach",
    0x12,
    "name:string! handle:handle! role:bool! snd-settle-mode:ubyte rcv-settle-mode:ubyte "
    "source:composite target:composite unsettled:any incomplete-unsettled:bool "
    "initial-delivery-count:seq max-message-size:ulong offered-capabilities:symbols "
    "desired-capabilities:symbols properties:fields",
)
Flow = _define(
    "flow",
    0x13,
    "next-incoming-id:seq incoming-window:uint! next-outgoing-id:seq! outgoing-window:uint! "
    "handle:handle delivery-count:seq link-credit:uint available:uint drain:bool echo:bool "
    "properties:fields",
)
Transfer = _define(
    "transfer",
    0x14,
    "handle:handle! delivery-id:seq delivery-tag:binary message-format:uint settled:bool "
    "more:bool rcv-settle-mode:ubyte state:composite resume:bool aborted:bool batchable:bool",
)
Disposition = _define(
    "disposition",
    0x15,
    "role:bool! first:seq! last:seq settled:bool state:composite batchable:bool",
)
Detach = _define("detach", 0x16, "handle:handle! closed:bool error:composite")
End = _define("end", 0x17, "error:composite")
Close = _define("close", 0x18, "error:composite")
Error = _define("error", 0x1D, "condition:symbol! description:string info:fields")
Received = _define("received", 0x23, "section-number:uint! section-offset:ulong!")
Accepted = _define("accepted", 0x24, "")
Rejected = _define("rejected", 0x25, "error:composite")
Released = _define("released", 0x26, "")
Modified = _define(
    "modified",
    0x27,
    "delivery-failed:bool undeliverable-here:bool message-annotations:fields",
)
Source = _define(
    "source",
    0x28,
    "address:any durable:uint expiry-policy:symbol timeout:uint dynamic:bool "
    "dynamic-node-properties:fields distribution-mode:symbol filter:fields "
    "default-outcome:any outcomes:symbols capabilities:symbols",
)
Target = _define(
    "target",
    0x29,
    "address:any durable:uint expiry-policy:symbol timeout:uint dynamic:bool "
    "dynamic-node-properties:fields capabilities:symbols",
)
Coordinator = _define("coordinator", 0x30, "capabilities:symbols")
SaslMechanisms = _define("sasl-mechanisms", 0x40, "sasl-server-mechanisms:symbols!")
SaslInit = _define("sasl-init", 0x41, "mechanism:symbol! initial-response:binary hostname:string")
SaslChallenge = _define("sasl-challenge", 0x42, "challenge:binary!")
SaslResponse = _define("sasl-response", 0x43, "response:binary!")
SaslOutcome = _define("sasl-outcome", 0x44, "code:ubyte! additional-data:binary")

PERFORMATIVES = {0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18}
SASL_FRAMES = {0x40, 0x41, 0x42, 0x43, 0x44}

# Encoded forms used often.
ACCEPTED = Accepted().encode_amqp()
RELEASED = Released().encode_amqp()


def decode_body(body: bytes) -> tuple[Any, int]:
    """Decode a frame body's performative; returns it and the offset of the payload after it."""
    value, off = decode(body, 0)
    if not isinstance(value, Described):
        raise DecodeError("frame body is not a described performative")
    code = descriptor_code(value.descriptor)
    cls = COMPOSITES.get(code) if code is not None else None
    if cls is None or (code not in PERFORMATIVES and code not in SASL_FRAMES):
        raise DecodeError(f"unknown performative {value.descriptor!r}")
    if not isinstance(value.value, list):
        raise DecodeError(f"{cls.NAME} is not a list")
    return cls.from_list(value.value), off


def error(condition: str, description: str | None = None) -> Any:
    return Error(condition=condition, description=description)


__all__ = [
    "Accepted",
    "Attach",
    "Begin",
    "Close",
    "Composite",
    "Coordinator",
    "Detach",
    "Disposition",
    "End",
    "Error",
    "FieldError",
    "Flow",
    "Modified",
    "Open",
    "Received",
    "Rejected",
    "Released",
    "SaslInit",
    "SaslMechanisms",
    "SaslOutcome",
    "Source",
    "Target",
    "Transfer",
    "decode_body",
    "descriptor_code",
    "error",
    "_enc_list",
]


class FastTransfer:
    """The fields of a transfer the node acts on, decoded by `fast_transfer`."""

    __slots__ = ("handle", "delivery_id", "settled", "more", "aborted")


# The fields after the delivery-tag (message-format, settled, more, ...) of transfers already
# decoded, with the field count: a sender repeats them on every transfer of a link, so most
# transfers decode the three leading fields by hand and the rest by one lookup.
_tails: dict[bytes, tuple[int, Any, Any, Any]] = {}
TAILS_MAX = 64


def fast_transfer(body: bytes) -> tuple[FastTransfer, int] | None:
    """Decode a transfer whose fields are all in their usual small encodings, by hand.

    Returns None for anything unusual (a list32, a delivery state, a field of an unexpected
    type): the general decoder then handles it, and reports errors.
    """
    try:
        if body[3] != 0xC0:
            return None
        end = 5 + body[4]
        count = body[5]
        c = body[6]
        if c == 0x52:
            handle = body[7]
            p = 8
        elif c == 0x43:
            handle = 0
            p = 7
        elif c == 0x70:
            handle = int.from_bytes(body[7:11], "big")
            p = 11
        else:
            return _fast_transfer(body)
        c = body[p]
        if c == 0x70:
            did: Any = int.from_bytes(body[p + 1 : p + 5], "big")
            p += 5
        elif c == 0x52:
            did = body[p + 1]
            p += 2
        elif c == 0x43:
            did = 0
            p += 1
        else:
            return _fast_transfer(body)
        if body[p] != 0xA0:
            return _fast_transfer(body)
        p += 2 + body[p + 1]
    except IndexError:
        return None
    if count < 3 or p > end or end > len(body):
        return _fast_transfer(body)
    tail = body[p:end]
    hit = _tails.get(tail)
    if hit is None or hit[0] != count:
        decoded = _fast_transfer(body)
        if decoded is not None and count <= 11:
            if len(_tails) >= TAILS_MAX:
                _tails.clear()
            t = decoded[0]
            _tails[tail] = (count, t.settled, t.more, t.aborted)
        return decoded
    t = FastTransfer()
    t.handle = handle
    t.delivery_id = did
    t.settled = hit[1]
    t.more = hit[2]
    t.aborted = hit[3]
    return t, end


def _fast_transfer(body: bytes) -> tuple[FastTransfer, int] | None:
    """fast_transfer's field-by-field decoding."""
    try:
        if body[3] != 0xC0:
            return None
        end = 5 + body[4]
        count = body[5]
        if count > 11 or end > len(body):
            return None
        p = 6
        vals: list[Any] = []
        for i in range(count):
            c = body[p]
            if c == 0x40:
                v: Any = None
                p += 1
            elif c == 0x43:
                v = 0
                p += 1
            elif c == 0x52 or c == 0x50:
                v = body[p + 1]
                p += 2
            elif c == 0x70:
                v = int.from_bytes(body[p + 1 : p + 5], "big")
                p += 5
            elif c == 0x41:
                v = True
                p += 1
            elif c == 0x42:
                v = False
                p += 1
            elif c == 0x56:
                b = body[p + 1]
                if b > 1:
                    return None
                v = b == 1
                p += 2
            elif c == 0xA0 and i == 2:
                p += 2 + body[p + 1]
                v = b""
            else:
                return None
            vals.append(v)
        if p != end:
            return None
    except IndexError:
        return None
    vals.extend([None] * (11 - count))
    handle, did, _tag, _fmt, settled, more, _rsm, _state, _resume, aborted, _batch = vals
    if handle is None or type(handle) is bool:
        return None
    for v in (did,):
        if v is not None and type(v) is bool:
            return None
    for v in (settled, more, aborted):
        if v is not None and type(v) is not bool:
            return None
    t = FastTransfer()
    t.handle = handle
    t.delivery_id = did
    t.settled = settled
    t.more = more
    t.aborted = aborted
    return t, end
