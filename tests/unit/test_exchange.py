"""node.routing.exchange.Exchange: bindings and routing for each exchange type."""

from __future__ import annotations

import pytest

from merpati.node.routing.exchange import Binding, Exchange, args_key
from merpati.node.routing.headers import HeadersError

Q1, Q2, E1 = ("q", "q1"), ("q", "q2"), ("e", "e1")


def b(dest, routing_key="", arguments=None, source="x") -> Binding:
    arguments = arguments or {}
    return Binding(source, dest, routing_key, dict(arguments), args_key(arguments))


def routed(ex: Exchange, routing_key: str = "", headers: dict | None = None) -> set:
    return set(ex.route(routing_key, lambda: headers or {}))


def test_unknown_type():
    with pytest.raises(ValueError):
        Exchange("x", "x-consistent-hash")


def test_args_key_is_order_independent():
    assert args_key({"a": 1, "b": 2}) == args_key({"b": 2, "a": 1})
    assert args_key({}) == args_key(None) == b""
    assert args_key({"a": 1}) != args_key({"a": 2})


def test_direct():
    ex = Exchange("x", "direct")
    assert ex.add_binding(b(Q1, "k"))
    assert ex.add_binding(b(Q2, "k"))
    assert ex.add_binding(b(Q1, "other"))
    assert routed(ex, "k") == {Q1, Q2}
    assert routed(ex, "other") == {Q1}
    assert routed(ex, "none") == set()
    assert routed(ex, "") == set()
    assert ex.remove_binding(b(Q2, "k").identity) is not None
    assert routed(ex, "k") == {Q1}


def test_direct_empty_routing_key_binding():
    ex = Exchange("x", "direct")
    ex.add_binding(b(Q1, ""))
    assert routed(ex, "") == {Q1}
    assert routed(ex, "a") == set()


def test_duplicate_binding_is_not_added_twice():
    ex = Exchange("x", "direct")
    assert ex.add_binding(b(Q1, "k")) is True
    assert ex.add_binding(b(Q1, "k")) is False
    assert len(ex.bindings) == 1
    ex.remove_binding(b(Q1, "k").identity)
    assert routed(ex, "k") == set()
    assert ex.bindings == {}
    assert ex.remove_binding(b(Q1, "k").identity) is None


def test_same_key_different_arguments_are_two_bindings():
    ex = Exchange("x", "direct")
    assert ex.add_binding(b(Q1, "k", {"a": 1}))
    assert ex.add_binding(b(Q1, "k", {"a": 2}))
    assert ex.add_binding(b(Q1, "k"))
    assert len(ex.bindings) == 3
    assert routed(ex, "k") == {Q1}
    ex.remove_binding(b(Q1, "k", {"a": 1}).identity)
    ex.remove_binding(b(Q1, "k").identity)
    assert routed(ex, "k") == {Q1}
    ex.remove_binding(b(Q1, "k", {"a": 2}).identity)
    assert routed(ex, "k") == set()
    assert ex._direct == {}


def test_fanout():
    ex = Exchange("x", "fanout")
    assert routed(ex, "any") == set()
    ex.add_binding(b(Q1, "ignored"))
    ex.add_binding(b(Q2))
    ex.add_binding(b(E1, "k"))
    ex.add_binding(b(Q1, "other"))
    assert routed(ex, "whatever") == {Q1, Q2, E1}
    ex.remove_binding(b(Q1, "ignored").identity)
    assert routed(ex, "") == {Q1, Q2, E1}
    ex.remove_binding(b(Q1, "other").identity)
    assert routed(ex, "") == {Q2, E1}


def test_topic():
    ex = Exchange("x", "topic")
    ex.add_binding(b(Q1, "a.*"))
    ex.add_binding(b(Q2, "#"))
    ex.add_binding(b(E1, "a.#.z"))
    assert routed(ex, "a.b") == {Q1, Q2}
    assert routed(ex, "a.z") == {Q1, Q2, E1}
    assert routed(ex, "a.b.c.z") == {Q2, E1}
    assert routed(ex, "") == {Q2}
    ex.remove_binding(b(Q2, "#").identity)
    assert routed(ex, "") == set()
    assert routed(ex, "a.b") == {Q1}


def test_topic_same_key_different_arguments():
    ex = Exchange("x", "topic")
    ex.add_binding(b(Q1, "a.*", {"n": 1}))
    ex.add_binding(b(Q1, "a.*", {"n": 2}))
    ex.remove_binding(b(Q1, "a.*", {"n": 1}).identity)
    assert routed(ex, "a.b") == {Q1}
    ex.remove_binding(b(Q1, "a.*", {"n": 2}).identity)
    assert routed(ex, "a.b") == set()


def test_headers():
    ex = Exchange("x", "headers")
    ex.add_binding(b(Q1, "", {"x-match": "all", "a": 1, "b": 2}))
    ex.add_binding(b(Q2, "", {"x-match": "any", "a": 1, "b": 2}))
    assert routed(ex, "rk ignored", {"a": 1, "b": 2}) == {Q1, Q2}
    assert routed(ex, "", {"a": 1}) == {Q2}
    assert routed(ex, "", {}) == set()
    ex.remove_binding(
        b(Q2, "", {"b": 2, "x-match": "any", "a": 1}).identity
    )  # other order, same binding
    assert routed(ex, "", {"a": 1, "b": 2}) == {Q1}


def test_headers_headers_are_only_read_for_headers_exchanges():
    for type_ in ("direct", "fanout", "topic"):
        ex = Exchange("x", type_)
        ex.add_binding(b(Q1, "k"))

        def boom():
            raise AssertionError("headers decoded for a non-headers exchange")

        assert set(ex.route("k", boom)) == {Q1}


def test_bindings_to():
    ex = Exchange("x", "direct")
    ex.add_binding(b(Q1, "a"))
    ex.add_binding(b(Q1, "b"))
    ex.add_binding(b(Q2, "a"))
    assert {x.routing_key for x in ex.bindings_to(Q1)} == {"a", "b"}
    assert [x.routing_key for x in ex.bindings_to(Q2)] == ["a"]
    assert ex.bindings_to(E1) == []


def test_invalid_headers_binding_is_not_left_half_added():
    ex = Exchange("x", "headers")
    with pytest.raises(HeadersError):
        ex.add_binding(b(Q1, "", {"x-match": "bogus"}))
    # The binding table and the matcher must agree: a rejected binding is in neither.
    assert ex.bindings == {}
