"""node.core.message: the protocol a message arrived in, and its 0-9-1 and 1.0 views."""

from __future__ import annotations

from merpati.node.amqp10 import message as m10
from merpati.node.amqp10.codec import Symbol, UByte, UInt, encode
from merpati.node.core.deadletter import dead_lettered
from merpati.node.core.message import AMQP091, AMQP10, Message
from merpati.node.wire.properties import encode_properties


def _from_10(payload: bytes, exchange: str = "amq.topic", key: str = "k") -> Message:
    """What the 1.0 front end does on a transfer: convert, record the protocol, keep the 1.0 view."""
    conv = m10.convert(payload)
    msg = Message(exchange, key, None, conv.props_raw, conv.body, AMQP10)
    msg.amqp10 = conv.cache
    return msg


def _payload(header: list | None = None) -> bytes:
    parts = []
    if header is not None:
        parts.append(b"\x00\x53\x70" + encode(header))
    parts.append(b"\x00\x53\x73" + encode(["mid-7", None, None, None, None, "corr"]))
    parts.append(b"\x00\x53\x74" + encode({"app": "x"}))
    parts.append(b"\x00\x53\x75" + encode(b"hello"))
    return b"".join(parts)


def test_a_091_message_defaults_to_priority_0() -> None:
    msg = Message("", "q", None, encode_properties({"delivery_mode": 2}), b"b")
    assert msg.protocol == AMQP091
    assert msg.priority == 0
    assert msg.amqp10 is None  # no 1.0 view until a 1.0 consumer asks


def test_a_10_message_defaults_to_priority_4() -> None:
    msg = _from_10(_payload())
    assert msg.protocol == AMQP10
    assert msg.priority == 4
    # The default comes from the origin, not from whether a 1.0 view happens to be cached.
    msg.amqp10 = None
    assert msg.priority == 4
    bare = Message("", "q", None, msg.props_raw, msg.body)
    bare.amqp10 = m10.view_of(bare)  # a cached 1.0 view does not make it a 1.0 message
    assert bare.priority == 0


def test_explicit_priority_wins_whatever_the_protocol() -> None:
    msg = _from_10(_payload([False, UByte(9)]))
    assert msg.priority == 9
    assert Message("", "q", None, encode_properties({"priority": 2}), b"", AMQP10).priority == 2


def test_copies_and_dead_letters_keep_the_protocol_and_share_views() -> None:
    msg = _from_10(_payload())
    c = msg.copy()
    assert c.protocol == AMQP10 and c.priority == 4
    assert c.amqp10 is msg.amqp10 and c.props_raw is msg.props_raw and c.body is msg.body
    assert c.deaths is None
    dl = dead_lettered(msg, "q", "rejected", "dlx", None)
    assert dl.protocol == AMQP10 and dl.priority == 4
    assert dl.amqp10 is None  # its properties changed (x-death): the 1.0 view is rebuilt
    assert dl.copy().deaths is dl.deaths


def test_from_stored_is_a_091_view_only() -> None:
    msg = _from_10(_payload([True]))
    back = Message.from_stored(msg.route_raw, msg.props_raw, msg.body)
    assert back.protocol == AMQP091 and back.amqp10 is None
    assert (back.exchange, back.routing_key, back.persistent) == ("amq.topic", "k", True)


def test_10_published_read_as_091_and_back() -> None:
    payload = _payload([True, UByte(6), UInt(5000)])
    msg = _from_10(payload)
    # The 0-9-1 view: what basic.deliver sends.
    props = msg.properties
    assert props["delivery_mode"] == 2 and props["priority"] == 6
    assert props["expiration"] == "5000"
    assert props["message_id"] == "mid-7" and props["correlation_id"] == "corr"
    assert props["headers"] == {"app": "x"}
    assert msg.body == b"hello" and msg.persistent
    # The 1.0 view: the sections as they arrived (1.0 → 1.0 is exact).
    assert b"".join(m10.payload_parts(msg.amqp10, msg.body, 0)) == payload
    # Built from the 0-9-1 view alone (as after recovery), it carries the same facts.
    stored = Message.from_stored(msg.route_raw, msg.props_raw, msg.body)
    stored.amqp10 = m10.view_of(stored)
    p = m10.parse(b"".join(m10.payload_parts(stored.amqp10, stored.body, 0)))
    assert p.header[:3] == [True, 6, 5000]
    assert p.properties[0] == "mid-7" and p.properties[5] == "corr"
    assert p.app_props == {"app": "x"} and p.data == [b"hello"]
    assert p.annotations[Symbol("x-routing-key")] == "k"
    # ... and converts back to the same 0-9-1 view.
    assert m10.to_core(p, b"".join(m10.payload_parts(stored.amqp10, stored.body, 0)))[0] == (
        msg.props_raw
    )


def test_091_published_read_as_10_and_back() -> None:
    props_raw = encode_properties(
        {"content_type": "text/plain", "delivery_mode": 1, "headers": {"h": "v", "x-a": 1}}
    )
    msg = Message("ex", "rk", None, props_raw, b"body")
    view = m10.view_of(msg)
    out = b"".join(m10.payload_parts(view, msg.body, 0))
    back = _from_10(out, "ex", "rk")
    assert back.properties["content_type"] == "text/plain"
    assert back.properties["headers"] == {"h": "v", "x-a": 1}
    assert back.body == b"body"


def test_view_of_reuses_the_last_conversion_only_for_the_same_facts() -> None:
    props_raw = encode_properties({"message_id": "same"})
    a = Message("ex", "rk", None, props_raw, b"1")
    b = Message("ex", "rk", None, props_raw, b"2")
    assert m10.view_of(a) is m10.view_of(b)
    other_key = Message("ex", "other", None, props_raw, b"3")
    assert m10.view_of(other_key) is not m10.view_of(a)
    equal_bytes = Message("ex", "rk", None, bytes(bytearray(props_raw)), b"4")
    assert m10.view_of(equal_bytes) == m10.view_of(a)
