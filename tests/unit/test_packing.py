"""The packed record formats of forwarding (cluster/forwarding/packing.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from merpati.cluster.forwarding.packing import (
    PackingError,
    Published,
    pack_deliveries,
    pack_published,
    unpack_deliveries,
    unpack_published,
)
from merpati.node.core.message import Message
from merpati.node.wire.table import encode_shortstr

names = st.text(min_size=0, max_size=40).filter(lambda s: len(s.encode()) <= 255)
blobs = st.binary(max_size=300)


def route_of(exchange: str, key: str) -> bytes:
    return encode_shortstr(exchange) + encode_shortstr(key)


@given(
    st.lists(
        st.tuples(
            st.integers(0, 2**64 - 1),
            names,
            st.lists(names, min_size=1, max_size=5),
            names,
            names,
            blobs,
            blobs,
            st.booleans(),
            st.integers(0, 2**32 - 1),
        ),
        max_size=20,
    )
)
def test_publish_records_round_trip(records: list) -> None:
    entries = [
        Published(mid, vhost, queues, route_of(ex, rk), props, body, redelivered, count)
        for mid, vhost, queues, ex, rk, props, body, redelivered, count in records
    ]
    out = list(unpack_published(pack_published(entries)))
    assert len(out) == len(records)
    for (mid, vhost, queues, ex, rk, props, body, redelivered, count), (
        gid,
        gvhost,
        gqueues,
        msg,
    ) in zip(records, out, strict=True):
        assert (gid, gvhost, list(gqueues)) == (mid, vhost, queues)
        assert (msg.redelivered, msg.delivery_count) == (redelivered, count)
        assert (msg.exchange, msg.routing_key) == (ex, rk)
        assert (msg.props_raw, msg.body) == (props, body)
        assert msg.route_raw == route_of(ex, rk)


@given(
    st.lists(
        st.tuples(
            st.integers(0, 2**64 - 1), st.booleans(), st.integers(0, 2**32 - 1), names, blobs, blobs
        ),
        max_size=20,
    )
)
def test_delivery_records_round_trip(records: list) -> None:
    msgs = []
    for seq, redelivered, count, rk, props, body in records:
        m = Message("ex", rk, None, props, body)
        m.seq, m.redelivered, m.delivery_count = seq, redelivered, count
        msgs.append(m)
    out = unpack_deliveries(pack_deliveries(msgs))
    assert [
        (m.seq, m.redelivered, m.delivery_count, m.routing_key, m.props_raw, m.body) for m in out
    ] == [
        (seq, redelivered, count, rk, props, body)
        for seq, redelivered, count, rk, props, body in records
    ]


def test_names_shared_within_a_batch_are_not_confused() -> None:
    # A vhost and a queue with the same name are encoded differently (the queue carries a length).
    entries = [
        Published(1, "/", ["/"], route_of("", "/"), b"", b"a"),
        Published(2, "/", ["q"], route_of("", "q"), b"", b"b"),
    ]
    out = [
        (mid, vhost, list(queues), msg.body)
        for mid, vhost, queues, msg in unpack_published(pack_published(entries))
    ]
    assert out == [(1, "/", ["/"], b"a"), (2, "/", ["q"], b"b")]


@pytest.mark.parametrize("cut", [1, 10, 25, -1])
def test_truncated_publish_batch_is_refused(cut: int) -> None:
    data = pack_published([Published(7, "/", ["q"], route_of("x", "k"), b"\x00\x00", b"body")])
    with pytest.raises(PackingError):
        list(unpack_published(data[:cut]))


@pytest.mark.parametrize("cut", [1, 22, -1])
def test_truncated_delivery_batch_is_refused(cut: int) -> None:
    m = Message("x", "k", None, b"\x00\x00", b"body")
    data = pack_deliveries([m])
    with pytest.raises(PackingError):
        unpack_deliveries(data[:cut])


@given(st.binary(max_size=200))
def test_garbage_raises_packing_error_only(data: bytes) -> None:
    for unpack in (lambda d: list(unpack_published(d)), unpack_deliveries):
        try:
            unpack(data)
        except PackingError:
            pass
