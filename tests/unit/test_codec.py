"""node.wire.table: field values and tables round trip; bad input raises DecodeError only."""

from __future__ import annotations

import struct
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from merpati.node.wire.table import (
    MAX_TABLE_DEPTH,
    ByteArray,
    DecodeError,
    Int,
    Timestamp,
    as_int,
    decode_array,
    decode_longstr_bytes,
    decode_shortstr,
    decode_table,
    decode_value,
    encode_longstr,
    encode_shortstr,
    encode_table,
    encode_value,
)

from ._strategies import INT_RANGES, field_values, strict_equal, tables


def roundtrip(value):
    raw = encode_value(value)
    decoded, end = decode_value(raw, 0)
    assert end == len(raw)
    return raw, decoded


# --- each type letter ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, letter",
    [
        ("hello", b"S"),
        ("", b"S"),
        ("héllo ✓", b"S"),
        (True, b"t"),
        (False, b"t"),
        (0, b"I"),
        (-(2**31), b"I"),
        (2**31 - 1, b"I"),
        (2**31, b"l"),
        (-(2**31) - 1, b"l"),
        (2**63 - 1, b"l"),
        (-(2**63), b"l"),
        (1.5, b"d"),
        (-0.0, b"d"),
        (None, b"V"),
        (Timestamp(1_700_000_000), b"T"),
        (Timestamp(2**64 - 1), b"T"),
        (ByteArray(b"\x00\x01\xff"), b"x"),
        (ByteArray(b""), b"x"),
        (Decimal("3.14"), b"D"),
        (Decimal("-0.001"), b"D"),
        (Decimal("42"), b"D"),
        ({"a": 1}, b"F"),
        ({}, b"F"),
        ([1, "x"], b"A"),
        ([], b"A"),
    ],
)
def test_value_type_letters_round_trip(value, letter):
    raw, decoded = roundtrip(value)
    assert raw[:1] == letter
    assert strict_equal(decoded, value), (value, decoded)


@pytest.mark.parametrize("kind", sorted(INT_RANGES))
def test_int_wrapper_keeps_its_kind_at_the_range_ends(kind):
    lo, hi = INT_RANGES[kind]
    for v in (lo, hi, 0):
        raw, decoded = roundtrip(Int(kind, v))
        assert raw[:1] == kind.encode()
        assert isinstance(decoded, Int) and decoded.kind == kind and decoded.value == v


def test_int_wrapper_sizes_on_the_wire():
    sizes = {"b": 1, "B": 1, "s": 2, "u": 2, "i": 4, "L": 8}
    for kind, size in sizes.items():
        assert len(encode_value(Int(kind, 1))) == 1 + size


def test_int_wrapper_equality_and_as_int():
    assert Int("b", 5) == 5
    assert Int("b", 5) == Int("L", 5)
    assert hash(Int("u", 7)) == hash(7)
    assert Int("B", 1) != True  # noqa: E712 - a bool is not an integer field value
    assert as_int(Int("s", -3)) == -3
    assert as_int(9) == 9
    assert as_int(True) is None
    assert as_int("9") is None
    assert as_int(None) is None


def test_bytes_longstr_decodes_to_str_when_utf8_and_to_bytes_otherwise():
    _, decoded = roundtrip(b"plain")
    assert decoded == "plain"
    _, decoded = roundtrip(b"\xff\xfe")
    assert decoded == b"\xff\xfe"


def test_tuple_encodes_as_array():
    _, decoded = roundtrip((1, "a", None))
    assert decoded == [1, "a", None]


def test_float32_and_signed_int32_letters_decode():
    raw = b"f" + struct.pack(">f", 1.5)
    assert decode_value(raw, 0) == (1.5, 5)
    raw = b"I" + struct.pack(">i", -5)
    assert decode_value(raw, 0) == (-5, 5)


def test_nonzero_boolean_octet_is_true():
    assert decode_value(b"t\x07", 0) == (True, 2)


def test_decimal_scale_is_preserved():
    _, decoded = roundtrip(Decimal("1.2300"))
    assert decoded == Decimal("1.23")
    assert decoded.as_tuple().exponent == -4


def test_nested_tables_and_arrays_round_trip():
    value = {
        "a": {"b": {"c": [1, [2, [3, {"d": None}]], Int("u", 9)]}},
        "e": [{"f": Timestamp(5)}, ByteArray(b"z"), Decimal("0.5")],
        "g": "",
    }
    raw = encode_table(value)
    decoded, end = decode_table(raw, 0)
    assert end == len(raw)
    assert strict_equal(decoded, value)


def test_empty_and_none_table_encode_to_zero_length():
    assert encode_table(None) == b"\x00\x00\x00\x00"
    assert encode_table({}) == b"\x00\x00\x00\x00"
    assert decode_table(b"\x00\x00\x00\x00", 0) == ({}, 4)


def test_decoding_at_an_offset():
    raw = b"junk" + encode_table({"k": "v"}) + b"more"
    table, end = decode_table(raw, 4)
    assert table == {"k": "v"}
    assert raw[end:] == b"more"


def test_decoding_from_memoryview():
    raw = encode_table({"k": [1, "v", {"x": Int("b", -1)}]})
    table, _ = decode_table(memoryview(raw), 0)
    assert strict_equal(table, {"k": [1, "v", {"x": Int("b", -1)}]})


def test_shortstr_limits():
    assert decode_shortstr(encode_shortstr("a" * 255), 0) == ("a" * 255, 256)
    assert decode_shortstr(encode_shortstr("é" * 127), 0)[0] == "é" * 127
    with pytest.raises(ValueError):
        encode_shortstr("a" * 256)
    with pytest.raises(ValueError):
        encode_shortstr("é" * 128)  # 256 bytes


def test_longstr_round_trip():
    raw = encode_longstr(b"\x00" * 1000)
    assert decode_longstr_bytes(raw, 0) == (b"\x00" * 1000, 1004)
    assert decode_longstr_bytes(encode_longstr("é"), 0) == ("é".encode(), 6)


def test_encode_rejects_unknown_types():
    with pytest.raises(TypeError):
        encode_value(object())
    with pytest.raises(TypeError):
        encode_value({1, 2})


# --- properties ------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(field_values)
def test_any_field_value_round_trips(value):
    _, decoded = roundtrip(value)
    assert strict_equal(decoded, value), (value, decoded)


@settings(max_examples=80, deadline=None)
@given(tables)
def test_any_table_round_trips(table):
    raw = encode_table(table)
    decoded, end = decode_table(raw, 0)
    assert end == len(raw)
    assert strict_equal(decoded, table)


@settings(max_examples=60, deadline=None)
@given(st.lists(field_values, max_size=5))
def test_any_array_round_trips(items):
    raw = encode_value(items)
    decoded, end = decode_array(raw, 1)
    assert end == len(raw)
    assert strict_equal(decoded, items)


# --- bad input -------------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(tables.filter(bool))
def test_every_truncation_of_a_table_raises_decode_error(table):
    raw = encode_table(table)
    for cut in range(len(raw)):
        with pytest.raises(DecodeError):
            decode_table(raw[:cut], 0)


@settings(max_examples=60, deadline=None)
@given(field_values)
def test_every_truncation_of_a_value_raises_decode_error(value):
    raw = encode_value(value)
    for cut in range(len(raw)):
        with pytest.raises(DecodeError):
            decode_value(raw[:cut], 0)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_arbitrary_bytes_decode_or_raise_decode_error(data):
    for decode in (decode_table, decode_value, decode_array, decode_shortstr, decode_longstr_bytes):
        try:
            decode(data, 0)
        except DecodeError:
            pass


@settings(max_examples=50, deadline=None)
@given(tables.filter(bool), st.data())
def test_mutated_tables_decode_or_raise_decode_error(table, data):
    raw = bytearray(encode_table(table))
    i = data.draw(st.integers(0, len(raw) - 1))
    raw[i] = data.draw(st.integers(0, 255))
    try:
        decode_table(bytes(raw), 0)
    except DecodeError:
        pass


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x00\x00",
        b"\x00\x00\x00\x05abc",  # size larger than the data
        b"\x00\x00\x00\x02\x01k",  # key then no value
        b"\x00\x00\x00\x03\x01kZ",  # unknown type letter
        b"\x00\x00\x00\x03\x01\xffV",  # key not UTF-8
        b"\x00\x00\x00\x04\x01kI\x00",  # truncated int inside a table
        b"\x00\x00\x00\x03\x01kt",  # truncated boolean
        b"\x00\x00\x00\x04\x01kD\x02",  # truncated decimal
        b"\x00\x00\x00\x07\x01kS\x00\x00\x00\x09",  # longstr longer than the table
    ],
)
def test_specific_bad_tables_raise_decode_error(raw):
    with pytest.raises(DecodeError):
        decode_table(raw, 0)


def test_table_size_smaller_than_contents_raises():
    inner = encode_shortstr("k") + encode_value("value")
    raw = struct.pack(">I", len(inner) - 2) + inner
    with pytest.raises(DecodeError):
        decode_table(raw, 0)


def test_too_deep_nesting_raises_decode_error():
    value: object = 1
    for _ in range(MAX_TABLE_DEPTH + 5):
        value = {"n": value}
    with pytest.raises(DecodeError):
        decode_table(encode_table(value), 0)
    value = 1
    for _ in range(MAX_TABLE_DEPTH + 5):
        value = [value]
    with pytest.raises(DecodeError):
        decode_value(encode_value(value), 0)


def test_nesting_within_the_limit_decodes():
    value: object = 1
    for _ in range(MAX_TABLE_DEPTH - 1):
        value = {"n": value}
    decoded, _ = decode_table(encode_table(value), 0)
    assert decoded == value
