"""node.amqp091.spec: every method encodes and decodes back to itself; bad payloads raise DecodeError."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from merpati.node.amqp091 import spec
from merpati.node.wire.table import DecodeError

from ._strategies import shortstrs, strict_equal, tables

FIELD_STRATEGIES = {
    "octet": st.integers(0, 255),
    "short": st.integers(0, 2**16 - 1),
    "long": st.integers(0, 2**32 - 1),
    "longlong": st.integers(0, 2**64 - 1),
    "shortstr": shortstrs(255),
    "longstr": st.binary(max_size=300),
    "bit": st.booleans(),
    "table": tables,
}

METHOD_IDS = sorted(spec.BY_ID)


def methods_of(info) -> st.SearchStrategy:
    return st.tuples(*(FIELD_STRATEGIES[t] for t in info.types)).map(lambda vals: info.cls(*vals))


def assert_same_method(decoded, method):
    assert type(decoded) is type(method)
    for name, t, a, b in zip(
        type(method)._fields,
        spec.BY_ID[(method.CLASS_ID, method.METHOD_ID)].types,
        decoded,
        method,
        strict=True,
    ):
        if t == "table":
            assert strict_equal(a, b), (name, a, b)
        else:
            assert type(a) is type(b) and a == b, (name, a, b)


def test_the_table_covers_the_whole_0_9_1_method_set():
    # 14 connection + 6 channel + 8 exchange + 10 queue + 18 basic + 2 confirm + 6 tx
    assert len(spec.BY_ID) == 64
    for (cid, mid), info in spec.BY_ID.items():
        assert cid == info.cls.CLASS_ID and mid == info.cls.METHOD_ID
        assert spec.BY_NAME[info.name] is info.cls
        assert spec.method_name(cid, mid) == info.name


@pytest.mark.parametrize("ids", METHOD_IDS, ids=[spec.BY_ID[i].name for i in METHOD_IDS])
@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_every_method_round_trips(ids, data):
    info = spec.BY_ID[ids]
    method = data.draw(methods_of(info))
    payload = spec.encode_method(method)
    assert payload[:4] == struct.pack(">HH", *ids)
    decoded = spec.decode_method(payload)
    assert_same_method(decoded, method)
    # A memoryview decodes the same way (the reader hands slices of its buffer).
    assert_same_method(spec.decode_method(memoryview(payload)), method)


@pytest.mark.parametrize("ids", METHOD_IDS, ids=[spec.BY_ID[i].name for i in METHOD_IDS])
@settings(max_examples=5, deadline=None)
@given(data=st.data())
def test_every_method_rejects_trailing_bytes_and_truncation(ids, data):
    info = spec.BY_ID[ids]
    method = data.draw(methods_of(info))
    payload = spec.encode_method(method)
    extra = data.draw(st.binary(min_size=1, max_size=4))
    with pytest.raises(DecodeError):
        spec.decode_method(payload + extra)
    for cut in range(len(payload)):
        with pytest.raises(DecodeError):
            spec.decode_method(payload[:cut])


@pytest.mark.parametrize("ids", METHOD_IDS, ids=[spec.BY_ID[i].name for i in METHOD_IDS])
def test_every_method_with_all_bits_set_and_maximal_numbers(ids):
    info = spec.BY_ID[ids]
    maxima = {
        "octet": 255,
        "short": 2**16 - 1,
        "long": 2**32 - 1,
        "longlong": 2**64 - 1,
        "shortstr": "x" * 255,
        "longstr": b"\xff" * 10,
        "bit": True,
        "table": {"k": "v"},
    }
    method = info.cls(*(maxima[t] for t in info.types))
    assert_same_method(spec.decode_method(spec.encode_method(method)), method)


def test_bits_pack_into_shared_octets():
    m = spec.BY_NAME["exchange.declare"](0, "x", "direct", True, False, True, False, True, {})
    payload = spec.encode_method(m)
    # ticket(2) + "x"(2) + "direct"(7) + one octet of 5 bits + empty table(4)
    assert len(payload) == 4 + 2 + 2 + 7 + 1 + 4
    assert payload[4 + 2 + 2 + 7] == 0b10101
    m = spec.BY_NAME["basic.nack"](5, False, True)
    assert spec.encode_method(m)[-1] == 0b10


def test_default_constructed_methods_encode():
    for info in spec.BY_ID.values():
        decoded = spec.decode_method(spec.encode_method(info.cls()))
        assert type(decoded) is info.cls


def test_unknown_method_and_short_payload():
    with pytest.raises(spec.UnknownMethod) as e:
        spec.decode_method(b"\x00\x0a\x00\x63")
    assert (e.value.class_id, e.value.method_id) == (10, 99)
    assert spec.method_name(10, 99) == "connection.99"
    assert spec.method_name(999, 1) == "999.1"
    for raw in (b"", b"\x00", b"\x00\x0a\x00"):
        with pytest.raises(DecodeError):
            spec.decode_method(raw)


def test_invalid_utf8_shortstr_raises_decode_error():
    payload = struct.pack(">HH", 60, 21) + b"\x02\xff\xfe"
    with pytest.raises(DecodeError):
        spec.decode_method(payload)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(METHOD_IDS), st.binary(max_size=40))
def test_arbitrary_arguments_decode_or_raise_decode_error(ids, tail):
    try:
        spec.decode_method(struct.pack(">HH", *ids) + tail)
    except DecodeError:
        pass
