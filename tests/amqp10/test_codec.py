"""AMQP 1.0 codec: round trips of every type (hypothesis) and arbitrary bytes failing cleanly."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from merpati.node.amqp10 import codec as c
from merpati.node.amqp10 import message as m
from merpati.node.amqp10 import performatives as P
from merpati.node.amqp10.codec import DecodeError, decode, encode, same

ints = st.integers
scalars = st.one_of(
    st.none(),
    st.booleans(),
    ints(0, 255).map(c.UByte),
    ints(0, 2**16 - 1).map(c.UShort),
    ints(0, 2**32 - 1).map(c.UInt),
    ints(0, 2**64 - 1).map(c.ULong),
    ints(-128, 127).map(c.Byte),
    ints(-(2**15), 2**15 - 1).map(c.Short),
    ints(-(2**31), 2**31 - 1).map(c.Int),
    ints(-(2**63), 2**63 - 1),
    ints(-(2**63), 2**63 - 1).map(c.Timestamp),
    st.floats(allow_nan=True, width=32).map(c.Float),
    st.floats(allow_nan=True),
    st.characters().map(c.Char),
    st.binary(min_size=4, max_size=4).map(c.Decimal32),
    st.binary(min_size=8, max_size=8).map(c.Decimal64),
    st.binary(min_size=16, max_size=16).map(c.Decimal128),
    st.uuids(),
    st.binary(max_size=300),
    st.text(max_size=300),
    st.text(alphabet=st.characters(max_codepoint=127), max_size=300).map(c.Symbol),
)
keys = st.one_of(st.text(max_size=20), st.text(alphabet="abcxyz-", max_size=20).map(c.Symbol))
arrays = st.one_of(
    st.lists(ints(0, 2**32 - 1).map(c.UInt), max_size=20).map(lambda x: c.Array(0x70, x)),
    st.lists(st.text(alphabet="abc:-", max_size=300).map(c.Symbol), max_size=5).map(
        lambda x: c.Array(0xA3, x)
    ),
    st.lists(ints(-(2**63), 2**63 - 1), max_size=10).map(lambda x: c.Array(0x81, x)),
    st.lists(st.booleans(), max_size=10).map(lambda x: c.Array(0x56, x)),
)
values = st.recursive(
    st.one_of(scalars, arrays),
    lambda children: st.one_of(
        st.lists(children, max_size=8),
        st.dictionaries(keys, children, max_size=8),
        st.tuples(
            st.one_of(ints(0, 2**64 - 1).map(c.ULong), st.text("abc:-", max_size=9).map(c.Symbol)),
            children,
        ).map(lambda t: c.Described(t[0], t[1])),
        st.lists(st.lists(ints(0, 100).map(c.UInt), max_size=3), max_size=4).map(
            lambda x: c.Array(0xD0, x)
        ),
    ),
    max_leaves=30,
)


@settings(max_examples=400)
@given(values)
def test_round_trip(v):
    raw = encode(v)
    out, off = decode(raw)
    assert off == len(raw)
    assert same(v, out), (v, out)


@settings(max_examples=1000)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_decode_error(raw):
    try:
        decode(raw)
    except DecodeError:
        pass
    try:
        P.decode_body(raw)
    except DecodeError:
        pass
    try:
        m.convert(raw)
    except DecodeError:
        pass
    try:
        c.skip(raw, 0)
    except DecodeError:
        pass


@settings(max_examples=500)
@given(values, st.data())
def test_mutated_encodings_raise_only_decode_error(v, data):
    raw = bytearray(encode(v))
    i = data.draw(st.integers(0, len(raw) - 1))
    raw[i] = data.draw(st.integers(0, 255))
    try:
        decode(bytes(raw))
    except DecodeError:
        pass


def test_compact_and_wide_forms():
    assert encode(c.UInt(0)) == b"\x43"
    assert encode(c.UInt(7)) == b"\x52\x07"
    assert encode(c.UInt(300)) == b"\x70\x00\x00\x01\x2c"
    assert encode(c.ULong(0)) == b"\x44"
    assert encode([]) == b"\x45"
    assert encode("x" * 300)[:1] == b"\xb1"
    assert decode(b"\xb1\x00\x00\x00\x01a")[0] == "a"  # wide forms of short values decode
    assert decode(b"\xd0\x00\x00\x00\x05\x00\x00\x00\x01\x41")[0] == [True]
    assert decode(b"\x98" + uuid.UUID(int=5).bytes)[0] == uuid.UUID(int=5)


def test_symbolic_descriptor_is_normalised():
    body = encode(c.Described(c.Symbol("amqp:begin:list"), [None, c.UInt(0), c.UInt(5), c.UInt(5)]))
    perf, _ = P.decode_body(body)
    assert isinstance(perf, P.Begin) and perf.incoming_window == 5


def test_field_type_errors_are_decode_errors():
    bad = encode(c.Described(c.ULong(0x12), ["name", "not-a-handle", True]))
    try:
        P.decode_body(bad)
    except P.FieldError as e:
        assert "handle" in str(e)
    else:
        raise AssertionError("expected a FieldError")


@given(
    st.integers(0, 2**32 - 1),
    st.one_of(st.none(), st.integers(0, 2**32 - 1)),
    st.binary(max_size=32),
    st.one_of(st.none(), st.booleans()),
    st.one_of(st.none(), st.booleans()),
    st.binary(max_size=50),
)
def test_fast_transfer_agrees_with_general_decoder(handle, did, tag, settled, more, payload):
    t = P.Transfer(handle=handle, delivery_id=did, delivery_tag=tag, message_format=0)
    t.settled, t.more = settled, more
    body = t.encode_amqp() + payload
    fast = P.fast_transfer(body)
    general, off = P.decode_body(body)
    assert fast is not None
    ft, foff = fast
    assert foff == off
    assert (ft.handle, ft.delivery_id, ft.settled, ft.more) == (
        general.handle,
        general.delivery_id,
        general.settled,
        general.more,
    )


def test_message_conversion_round_trip_through_091_properties():
    props = [
        "mid-1",
        b"guest",
        "/queues/x",
        "subj",
        "/queues/reply",
        uuid.UUID(int=42),
        c.Symbol("application/json"),
        c.Symbol("gzip"),
        None,
        c.Timestamp(1_700_000_000_000),
        "group",
    ]
    payload = (
        b"\x00\x53\x70"
        + encode([True, c.UByte(7), c.UInt(60000)])
        + b"\x00\x53\x72"
        + encode({c.Symbol("x-opt-a"): "b"})
        + b"\x00\x53\x73"
        + encode(props)
        + b"\x00\x53\x74"
        + encode({"k": c.Int(5), "s": "v"})
        + b"\x00\x53\x75"
        + encode(b"BODY")
    )
    conv = m.convert(payload)
    conv2 = m.convert(payload)  # through the prefix cache
    assert conv2.props_raw == conv.props_raw and conv2.body == b"BODY"
    from merpati.node.wire.properties import decode_properties

    p = decode_properties(conv.props_raw)
    assert p["delivery_mode"] == 2 and p["priority"] == 7 and p["expiration"] == "60000"
    assert p["message_id"] == "mid-1" and p["user_id"] == "guest"
    assert p["correlation_id"] == f"urn:uuid:{uuid.UUID(int=42)}"
    assert p["content_type"] == "application/json" and p["content_encoding"] == "gzip"
    assert p["timestamp"].seconds == 1_700_000_000 and p["app_id"] == "group"
    assert p["headers"]["k"] == 5 and p["headers"]["s"] == "v" and p["headers"]["x-opt-a"] == "b"
    # 1.0 → 1.0 keeps the sections as they arrived (the header is rebuilt per delivery).
    out = b"".join(m.payload_parts(conv.cache, conv.body, 0))
    assert out == payload
    # 0-9-1 → 1.0 from the property bytes alone.
    back = m.from_core(conv.props_raw, "", "q")
    sections = m.parse(b"".join(m.payload_parts(back, conv.body, 2)))
    assert sections.header[0] is True and sections.header[4] == 2
    assert sections.properties[0] == "mid-1"
    assert sections.properties[5] == uuid.UUID(int=42)
    assert sections.app_props == {"k": 5, "s": "v"}
    assert sections.data == [b"BODY"]


def test_amqp_value_body_travels_encoded():
    payload = b"\x00\x53\x77" + encode({"a": [1, 2]})
    conv = m.convert(payload)
    from merpati.node.wire.properties import decode_properties

    assert decode_properties(conv.props_raw)["type"] == "amqp-1.0"
    assert conv.body == payload
    back = m.from_core(conv.props_raw, "", "q")
    parsed = m.parse(b"".join(m.payload_parts(back, conv.body, 0)))
    assert parsed.body_kind == m.VALUE


@pytest.mark.parametrize(
    "after",
    [
        b"\x00\x53\x75" + encode(b"B" * 300),  # a long data section (vbin32)
        b"\x00\x53\x75" + encode(b"xy") + b"\x00\x53\x75" + encode(b"z"),  # two data sections
        b"\x00\x53\x75" + encode(b"xy") + b"\x00\x53\x78" + encode({"f": 1}),  # with a footer
        b"\x00\x53\x77" + encode("a value"),  # amqp-value body
    ],
)
def test_repeated_prefix_shortcut_agrees_with_a_full_conversion(after: bytes) -> None:
    prefix = b"\x00\x53\x73" + encode(["mid", None, None, "subj"])
    first = prefix + b"\x00\x53\x75" + encode(b"first")
    m.convert(first)
    m.convert(first)  # the prefix is now the last one converted
    payload = prefix + after
    fast = m.convert(payload)
    m._last = None
    m._prefix_cache.clear()
    full = m.convert(payload)
    assert (fast.props_raw, fast.body, fast.subject) == (full.props_raw, full.body, full.subject)
