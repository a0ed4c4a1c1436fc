"""Hypothesis strategies and helpers shared by the unit tests (AMQP 0-9-1 field values)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from hypothesis import strategies as st

from merpati.node.wire.table import ByteArray, Int, Timestamp

INT_RANGES = {
    "b": (-(2**7), 2**7 - 1),
    "B": (0, 2**8 - 1),
    "s": (-(2**15), 2**15 - 1),
    "u": (0, 2**16 - 1),
    "i": (0, 2**32 - 1),
    "L": (0, 2**64 - 1),
}


def shortstrs(max_bytes: int = 255) -> st.SearchStrategy[str]:
    """Text whose UTF-8 encoding fits in a shortstr."""
    return st.text(max_size=max_bytes).filter(lambda s: len(s.encode("utf-8")) <= max_bytes)


# Bytes that are not valid UTF-8, so that a longstr decodes back to bytes rather than str.
non_utf8_bytes = st.binary(max_size=40).map(lambda b: b"\xff" + b)

int_wrappers = st.sampled_from(sorted(INT_RANGES)).flatmap(
    lambda k: st.integers(*INT_RANGES[k]).map(lambda v: Int(k, v))
)

decimals = st.tuples(st.integers(-(2**31), 2**31 - 1), st.integers(0, 20)).map(
    lambda t: Decimal(t[0]).scaleb(-t[1])
)

scalar_values = st.one_of(
    st.text(max_size=30),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    int_wrappers,
    non_utf8_bytes,
    st.floats(allow_nan=False),
    st.none(),
    st.integers(0, 2**64 - 1).map(Timestamp),
    st.binary(max_size=30).map(ByteArray),
    decimals,
)

field_values = st.recursive(
    scalar_values,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(shortstrs(20), children, max_size=4),
    ),
    max_leaves=12,
)

tables = st.dictionaries(shortstrs(20), field_values, max_size=5)


def strict_equal(a: Any, b: Any) -> bool:
    """Equality that also compares types, Int kinds and Decimal exponents (== is too lenient)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, Int):
        return a.kind == b.kind and a.value == b.value
    if isinstance(a, Decimal):
        return a == b and a.as_tuple().exponent == b.as_tuple().exponent
    if isinstance(a, dict):
        return list(a) == list(b) and all(strict_equal(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(strict_equal(x, y) for x, y in zip(a, b, strict=True))
    return a == b
