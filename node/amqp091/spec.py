"""The AMQP 0-9-1 method table and a general, table-driven codec for it.

Every method is a namedtuple class generated from `_METHODS` (its fields in wire order), so control
methods read naturally in the channel code (`m.queue`, `m.passive`). This codec serves the control
methods; basic.publish, the content header and basic.deliver take the hand-written fast path in
`frames` and `render`, which is where the throughput is.
"""

from __future__ import annotations

import struct
from collections import namedtuple
from typing import Any

from ..wire.table import (
    DecodeError,
    decode_longstr_bytes,
    decode_shortstr,
    decode_table,
    encode_longstr,
    encode_shortstr,
    encode_table,
)

# (class_id, method_id, name, [(field, type)], has_content)
# Types: octet short long longlong shortstr longstr bit table.
_METHODS: list[tuple[int, int, str, list[tuple[str, str]], bool]] = [
    (
        10,
        10,
        "connection.start",
        [
            ("version_major", "octet"),
            ("version_minor", "octet"),
            ("server_properties", "table"),
            ("mechanisms", "longstr"),
            ("locales", "longstr"),
        ],
        False,
    ),
    (
        10,
        11,
        "connection.start-ok",
        [
            ("client_properties", "table"),
            ("mechanism", "shortstr"),
            ("response", "longstr"),
            ("locale", "shortstr"),
        ],
        False,
    ),
    (10, 20, "connection.secure", [("challenge", "longstr")], False),
    (10, 21, "connection.secure-ok", [("response", "longstr")], False),
    (
        10,
        30,
        "connection.tune",
        [("channel_max", "short"), ("frame_max", "long"), ("heartbeat", "short")],
        False,
    ),
    (
        10,
        31,
        "connection.tune-ok",
        [("channel_max", "short"), ("frame_max", "long"), ("heartbeat", "short")],
        False,
    ),
    (
        10,
        40,
        "connection.open",
        [("virtual_host", "shortstr"), ("capabilities", "shortstr"), ("insist", "bit")],
        False,
    ),
    (10, 41, "connection.open-ok", [("known_hosts", "shortstr")], False),
    (
        10,
        50,
        "connection.close",
        [
            ("reply_code", "short"),
            ("reply_text", "shortstr"),
            ("class_id", "short"),
            ("method_id", "short"),
        ],
        False,
    ),
    (10, 51, "connection.close-ok", [], False),
    (10, 60, "connection.blocked", [("reason", "shortstr")], False),
    (10, 61, "connection.unblocked", [], False),
    (
        10,
        70,
        "connection.update-secret",
        [("new_secret", "longstr"), ("reason", "shortstr")],
        False,
    ),
    (10, 71, "connection.update-secret-ok", [], False),
    (20, 10, "channel.open", [("out_of_band", "shortstr")], False),
    (20, 11, "channel.open-ok", [("channel_id", "longstr")], False),
    (20, 20, "channel.flow", [("active", "bit")], False),
    (20, 21, "channel.flow-ok", [("active", "bit")], False),
    (
        20,
        40,
        "channel.close",
        [
            ("reply_code", "short"),
            ("reply_text", "shortstr"),
            ("class_id", "short"),
            ("method_id", "short"),
        ],
        False,
    ),
    (20, 41, "channel.close-ok", [], False),
    (
        40,
        10,
        "exchange.declare",
        [
            ("ticket", "short"),
            ("exchange", "shortstr"),
            ("type", "shortstr"),
            ("passive", "bit"),
            ("durable", "bit"),
            ("auto_delete", "bit"),
            ("internal", "bit"),
            ("nowait", "bit"),
            ("arguments", "table"),
        ],
        False,
    ),
    (40, 11, "exchange.declare-ok", [], False),
    (
        40,
        20,
        "exchange.delete",
        [("ticket", "short"), ("exchange", "shortstr"), ("if_unused", "bit"), ("nowait", "bit")],
        False,
    ),
    (40, 21, "exchange.delete-ok", [], False),
    (
        40,
        30,
        "exchange.bind",
        [
            ("ticket", "short"),
            ("destination", "shortstr"),
            ("source", "shortstr"),
            ("routing_key", "shortstr"),
            ("nowait", "bit"),
            ("arguments", "table"),
        ],
        False,
    ),
    (40, 31, "exchange.bind-ok", [], False),
    (
        40,
        40,
        "exchange.unbind",
        [
            ("ticket", "short"),
            ("destination", "shortstr"),
            ("source", "shortstr"),
            ("routing_key", "shortstr"),
            ("nowait", "bit"),
            ("arguments", "table"),
        ],
        False,
    ),
    (40, 51, "exchange.unbind-ok", [], False),
    (
        50,
        10,
        "queue.declare",
        [
            ("ticket", "short"),
            ("queue", "shortstr"),
            ("passive", "bit"),
            ("durable", "bit"),
            ("exclusive", "bit"),
            ("auto_delete", "bit"),
            ("nowait", "bit"),
            ("arguments", "table"),
        ],
        False,
    ),
    (
        50,
        11,
        "queue.declare-ok",
        [("queue", "shortstr"), ("message_count", "long"), ("consumer_count", "long")],
        False,
    ),
    (
        50,
        20,
        "queue.bind",
        [
            ("ticket", "short"),
            ("queue", "shortstr"),
            ("exchange", "shortstr"),
            ("routing_key", "shortstr"),
            ("nowait", "bit"),
            ("arguments", "table"),
        ],
        False,
    ),
    (50, 21, "queue.bind-ok", [], False),
    (50, 30, "queue.purge", [("ticket", "short"), ("queue", "shortstr"), ("nowait", "bit")], False),
    (50, 31, "queue.purge-ok", [("message_count", "long")], False),
    (
        50,
        40,
        "queue.delete",
        [
            ("ticket", "short"),
            ("queue", "shortstr"),
            ("if_unused", "bit"),
            ("if_empty", "bit"),
            ("nowait", "bit"),
        ],
        False,
    ),
    (50, 41, "queue.delete-ok", [("message_count", "long")], False),
    (
        50,
        50,
        "queue.unbind",
        [
            ("ticket", "short"),
            ("queue", "shortstr"),
            ("exchange", "shortstr"),
            ("routing_key", "shortstr"),
            ("arguments", "table"),
        ],
        False,
    ),
    (50, 51, "queue.unbind-ok", [], False),
    (
        60,
        10,
        "basic.qos",
        [("prefetch_size", "long"), ("prefetch_count", "short"), ("global_", "bit")],
        False,
    ),
    (60, 11, "basic.qos-ok", [], False),
    (
        60,
        20,
        "basic.consume",
        [
            ("ticket", "short"),
            ("queue", "shortstr"),
            ("consumer_tag", "shortstr"),
            ("no_local", "bit"),
            ("no_ack", "bit"),
            ("exclusive", "bit"),
            ("nowait", "bit"),
            ("arguments", "table"),
        ],
        False,
    ),
    (60, 21, "basic.consume-ok", [("consumer_tag", "shortstr")], False),
    (60, 30, "basic.cancel", [("consumer_tag", "shortstr"), ("nowait", "bit")], False),
    (60, 31, "basic.cancel-ok", [("consumer_tag", "shortstr")], False),
    (
        60,
        40,
        "basic.publish",
        [
            ("ticket", "short"),
            ("exchange", "shortstr"),
            ("routing_key", "shortstr"),
            ("mandatory", "bit"),
            ("immediate", "bit"),
        ],
        True,
    ),
    (
        60,
        50,
        "basic.return",
        [
            ("reply_code", "short"),
            ("reply_text", "shortstr"),
            ("exchange", "shortstr"),
            ("routing_key", "shortstr"),
        ],
        True,
    ),
    (
        60,
        60,
        "basic.deliver",
        [
            ("consumer_tag", "shortstr"),
            ("delivery_tag", "longlong"),
            ("redelivered", "bit"),
            ("exchange", "shortstr"),
            ("routing_key", "shortstr"),
        ],
        True,
    ),
    (60, 70, "basic.get", [("ticket", "short"), ("queue", "shortstr"), ("no_ack", "bit")], False),
    (
        60,
        71,
        "basic.get-ok",
        [
            ("delivery_tag", "longlong"),
            ("redelivered", "bit"),
            ("exchange", "shortstr"),
            ("routing_key", "shortstr"),
            ("message_count", "long"),
        ],
        True,
    ),
    (60, 72, "basic.get-empty", [("cluster_id", "shortstr")], False),
    (60, 80, "basic.ack", [("delivery_tag", "longlong"), ("multiple", "bit")], False),
    (60, 90, "basic.reject", [("delivery_tag", "longlong"), ("requeue", "bit")], False),
    (60, 100, "basic.recover-async", [("requeue", "bit")], False),
    (60, 110, "basic.recover", [("requeue", "bit")], False),
    (60, 111, "basic.recover-ok", [], False),
    (
        60,
        120,
        "basic.nack",
        [("delivery_tag", "longlong"), ("multiple", "bit"), ("requeue", "bit")],
        False,
    ),
    (85, 10, "confirm.select", [("nowait", "bit")], False),
    (85, 11, "confirm.select-ok", [], False),
    (90, 10, "tx.select", [], False),
    (90, 11, "tx.select-ok", [], False),
    (90, 20, "tx.commit", [], False),
    (90, 21, "tx.commit-ok", [], False),
    (90, 30, "tx.rollback", [], False),
    (90, 31, "tx.rollback-ok", [], False),
]

_DEFAULTS = {
    "octet": 0,
    "short": 0,
    "long": 0,
    "longlong": 0,
    "shortstr": "",
    "longstr": b"",
    "bit": False,
    "table": None,
}


def _class_name(name: str) -> str:
    return "".join(part.capitalize() for part in name.replace("-", ".").split("."))


class _MethodInfo:
    __slots__ = ("cls", "class_id", "method_id", "name", "fields", "types", "has_content")

    def __init__(
        self,
        cls: type,
        class_id: int,
        method_id: int,
        name: str,
        fields: list[tuple[str, str]],
        has_content: bool,
    ) -> None:
        self.cls = cls
        self.class_id = class_id
        self.method_id = method_id
        self.name = name
        self.fields = [f for f, _ in fields]
        self.types = [t for _, t in fields]
        self.has_content = has_content


BY_ID: dict[tuple[int, int], _MethodInfo] = {}
BY_NAME: dict[str, type] = {}

for _cid, _mid, _name, _fields, _content in _METHODS:
    _cls = namedtuple(_class_name(_name), [f for f, _ in _fields])  # type: ignore[misc]
    _cls.__new__.__defaults__ = tuple(_DEFAULTS[t] for _, t in _fields)
    _cls.CLASS_ID = _cid
    _cls.METHOD_ID = _mid
    _cls.NAME = _name
    _cls.HAS_CONTENT = _content
    BY_ID[(_cid, _mid)] = _MethodInfo(_cls, _cid, _mid, _name, _fields, _content)
    BY_NAME[_name] = _cls
    globals()[_class_name(_name)] = _cls

CLASS_NAMES = {
    10: "connection",
    20: "channel",
    40: "exchange",
    50: "queue",
    60: "basic",
    85: "confirm",
    90: "tx",
}


def method_name(class_id: int, method_id: int) -> str:
    info = BY_ID.get((class_id, method_id))
    if info is not None:
        return info.name
    return f"{CLASS_NAMES.get(class_id, class_id)}.{method_id}"


def decode_method(payload: bytes | memoryview) -> Any:
    """Decode a method frame payload into its namedtuple; raises DecodeError or KeyError (unknown)."""
    if len(payload) < 4:
        raise DecodeError("method frame shorter than its class and method ids")
    class_id, method_id = struct.unpack_from(">HH", payload, 0)
    info = BY_ID.get((class_id, method_id))
    if info is None:
        raise UnknownMethod(class_id, method_id)
    values: list[Any] = []
    off = 4
    bit_byte = 0
    bit_pos = 8
    buf = payload
    n = len(buf)
    try:
        for t in info.types:
            if t == "bit":
                if bit_pos == 8:
                    if off >= n:
                        raise DecodeError("truncated bit field")
                    bit_byte = buf[off]
                    off += 1
                    bit_pos = 0
                values.append(bool(bit_byte & (1 << bit_pos)))
                bit_pos += 1
                continue
            bit_pos = 8
            if t == "shortstr":
                v, off = decode_shortstr(buf, off)
            elif t == "short":
                (v,) = struct.unpack_from(">H", buf, off)
                off += 2
            elif t == "long":
                (v,) = struct.unpack_from(">I", buf, off)
                off += 4
            elif t == "longlong":
                (v,) = struct.unpack_from(">Q", buf, off)
                off += 8
            elif t == "octet":
                if off >= n:
                    raise DecodeError("truncated octet")
                v = buf[off]
                off += 1
            elif t == "longstr":
                v, off = decode_longstr_bytes(buf, off)
            elif t == "table":
                v, off = decode_table(buf, off)
            else:  # pragma: no cover - table is static
                raise AssertionError(t)
            values.append(v)
    except struct.error:
        raise DecodeError(f"truncated arguments of {info.name}")
    if off != n:
        raise DecodeError(f"{n - off} unexpected trailing bytes after the arguments of {info.name}")
    return info.cls(*values)


def encode_method(method: Any) -> bytes:
    """Encode a method namedtuple to a method frame payload (without the frame envelope)."""
    info = BY_ID[(method.CLASS_ID, method.METHOD_ID)]
    parts = [struct.pack(">HH", info.class_id, info.method_id)]
    bits = 0
    bit_pos = 0
    for t, v in zip(info.types, method, strict=True):
        if t == "bit":
            if v:
                bits |= 1 << bit_pos
            bit_pos += 1
            if bit_pos == 8:
                parts.append(bytes((bits,)))
                bits = bit_pos = 0
            continue
        if bit_pos:
            parts.append(bytes((bits,)))
            bits = bit_pos = 0
        if t == "shortstr":
            parts.append(encode_shortstr(v))
        elif t == "short":
            parts.append(struct.pack(">H", v))
        elif t == "long":
            parts.append(struct.pack(">I", v))
        elif t == "longlong":
            parts.append(struct.pack(">Q", v))
        elif t == "octet":
            parts.append(struct.pack(">B", v))
        elif t == "longstr":
            parts.append(encode_longstr(v))
        elif t == "table":
            parts.append(encode_table(v))
    if bit_pos:
        parts.append(bytes((bits,)))
    return b"".join(parts)


class UnknownMethod(Exception):
    def __init__(self, class_id: int, method_id: int) -> None:
        super().__init__(f"unknown method {class_id}.{method_id}")
        self.class_id = class_id
        self.method_id = method_id
