"""node.wire.properties: content properties round trip; is_persistent."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from merpati.node.wire.properties import (
    PROPERTIES,
    decode_properties,
    encode_properties,
    flags_of,
    is_persistent,
    set_header,
)
from merpati.node.wire.table import DecodeError, Int, Timestamp

from ._strategies import shortstrs, strict_equal, tables

PROPERTY_VALUES = {
    "shortstr": shortstrs(255),
    "octet": st.integers(0, 255),
    "table": tables,
    "timestamp": st.integers(0, 2**64 - 1).map(Timestamp),
}

properties = st.fixed_dictionaries(
    {},
    optional={name: PROPERTY_VALUES[kind] for name, _bit, kind in PROPERTIES},
)


@settings(max_examples=150, deadline=None)
@given(properties)
def test_properties_round_trip(props):
    raw = encode_properties(props)
    decoded = decode_properties(raw)
    assert set(decoded) == set(props)
    for name in props:
        assert strict_equal(decoded[name], props[name]), name
    # The flags word announces exactly the properties present.
    expected = 0
    for name, bit, _ in PROPERTIES:
        if name in props:
            expected |= bit
    assert flags_of(raw) == expected


@settings(max_examples=50, deadline=None)
@given(properties.filter(bool))
def test_truncated_properties_raise_decode_error(props):
    raw = encode_properties(props)
    for cut in range(len(raw)):
        with pytest.raises(DecodeError):
            decode_properties(raw[:cut])
    with pytest.raises(DecodeError):
        decode_properties(raw + b"\x00")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=60))
def test_arbitrary_property_bytes_decode_or_raise_decode_error(raw):
    try:
        decode_properties(raw)
    except DecodeError:
        pass


def test_empty_properties():
    assert encode_properties({}) == b"\x00\x00"
    assert decode_properties(b"\x00\x00") == {}
    assert flags_of(b"") == 0
    with pytest.raises(DecodeError):
        decode_properties(b"")


def test_none_values_are_left_out():
    assert encode_properties({"content_type": None, "priority": None}) == b"\x00\x00"


def test_wire_order_and_flags():
    raw = encode_properties({"delivery_mode": 2, "content_type": "text/plain"})
    assert raw == struct.pack(">H", 0x8000 | 0x1000) + b"\x0atext/plain" + b"\x02"


def test_timestamp_accepts_plain_int_on_encode():
    assert decode_properties(encode_properties({"timestamp": 1234})) == {
        "timestamp": Timestamp(1234)
    }


def test_headers_keep_their_field_types():
    headers = {"a": Int("b", -1), "b": [1, "x"], "c": None}
    decoded = decode_properties(encode_properties({"headers": headers}))
    assert strict_equal(decoded["headers"], headers)


def test_continuation_flag_words_are_skipped():
    body = b"\x05hello"
    raw = struct.pack(">HH", 0x8000 | 1, 0) + body
    assert decode_properties(raw) == {"content_type": "hello"}
    raw = struct.pack(">HHH", 0x8000 | 1, 1, 0) + body
    assert decode_properties(raw) == {"content_type": "hello"}
    with pytest.raises(DecodeError):
        decode_properties(struct.pack(">H", 0x8000 | 1))


@pytest.mark.parametrize(
    "props, expected",
    [
        ({}, False),
        ({"delivery_mode": 2}, True),
        ({"delivery_mode": 1}, False),
        ({"delivery_mode": 0}, False),
        ({"content_type": "x", "headers": {"k": [1, 2]}, "delivery_mode": 2, "priority": 9}, True),
        ({"content_type": "x", "headers": {"k": [1, 2]}, "delivery_mode": 1}, False),
        ({"priority": 2, "headers": {"delivery_mode": 2}}, False),
    ],
)
def test_is_persistent(props, expected):
    assert is_persistent(encode_properties(props)) is expected


def test_is_persistent_of_empty_raw_is_false():
    assert is_persistent(b"") is False


# -- set_header: the x-delivery-count a quorum queue adds --------------------------------------


@settings(max_examples=150, deadline=None)
@given(properties, st.integers(1, 2**31))
def test_set_header_changes_that_header_and_nothing_else(props, count):
    raw = encode_properties(props)
    out = decode_properties(set_header(raw, "x-delivery-count", Int("l", count)))
    expected = dict(props)
    expected["headers"] = {
        **{k: v for k, v in (props.get("headers") or {}).items() if k != "x-delivery-count"},
        "x-delivery-count": count,
    }
    assert set(out) == set(expected)
    for name in expected:
        assert strict_equal(out[name], expected[name]), name


def test_set_header_keeps_the_other_headers_bytes_and_replaces_its_own():
    """A long stays a long (a decode and re-encode would make a small one an `I`), and a header
    of the same name (a message republished with it) is replaced, not doubled."""
    long_field = b"\x04span" + b"l" + struct.pack(">q", 7)
    old = b"\x10x-delivery-count" + b"l" + struct.pack(">q", 9)
    table = long_field + old
    raw = (
        struct.pack(">H", 0x8000 | 0x2000 | 0x1000)
        + b"\x04text"
        + struct.pack(">I", len(table))
        + table
        + b"\x02"
    )
    out = set_header(raw, "x-delivery-count", Int("l", 2))
    new = b"\x10x-delivery-count" + b"l" + struct.pack(">q", 2)
    table = long_field + new
    assert out == raw[:7] + struct.pack(">I", len(table)) + table + b"\x02"


def test_set_header_adds_a_headers_table_where_there_was_none():
    raw = encode_properties({"content_type": "t", "delivery_mode": 2, "priority": 1})
    out = set_header(raw, "x-delivery-count", Int("l", 1))
    assert flags_of(out) == flags_of(raw) | 0x2000
    assert decode_properties(out) == {
        "content_type": "t",
        "headers": {"x-delivery-count": 1},
        "delivery_mode": 2,
        "priority": 1,
    }
    assert decode_properties(set_header(b"", "h", 1)) == {"headers": {"h": 1}}


@pytest.mark.parametrize(
    "raw",
    [
        struct.pack(">H", 0x2000) + struct.pack(">I", 10) + b"\x01a",  # table past the end
        struct.pack(">H", 0x2000) + struct.pack(">I", 3) + b"\x01a?",  # unknown field type
        struct.pack(">H", 0x8000) + b"\x09abc",  # content-type past the end
    ],
)
def test_set_header_refuses_malformed_bytes(raw):
    with pytest.raises(DecodeError):
        set_header(raw, "x-delivery-count", Int("l", 1))
