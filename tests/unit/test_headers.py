"""node.routing.headers: x-match all / any / all-with-x / any-with-x, as RabbitMQ does."""

from __future__ import annotations

import pytest

from merpati.node.routing.headers import HeadersError, HeadersMatcher
from merpati.node.wire.table import Int


def matches(arguments: dict, headers: dict | None) -> bool:
    m = HeadersMatcher()
    m.add(arguments, "q", b"k")
    return m.match(headers) == {"q"}


@pytest.mark.parametrize(
    "args, headers, expected",
    [
        # all (also the default when x-match is absent)
        ({"x-match": "all", "a": 1, "b": "x"}, {"a": 1, "b": "x"}, True),
        ({"x-match": "all", "a": 1, "b": "x"}, {"a": 1, "b": "x", "c": 3}, True),
        ({"x-match": "all", "a": 1, "b": "x"}, {"a": 1}, False),
        ({"x-match": "all", "a": 1, "b": "x"}, {"a": 1, "b": "y"}, False),
        ({"a": 1, "b": "x"}, {"a": 1, "b": "x"}, True),
        ({"a": 1, "b": "x"}, {"a": 1}, False),
        ({"x-match": "all"}, {}, True),
        ({"x-match": "all"}, None, True),
        # any
        ({"x-match": "any", "a": 1, "b": "x"}, {"a": 1}, True),
        ({"x-match": "any", "a": 1, "b": "x"}, {"b": "x"}, True),
        ({"x-match": "any", "a": 1, "b": "x"}, {"a": 2, "b": "y"}, False),
        ({"x-match": "any", "a": 1, "b": "x"}, {}, False),
        ({"x-match": "any"}, {"a": 1}, False),
        # x- binding arguments are ignored by all/any...
        ({"x-match": "all", "x-foo": "bar", "a": 1}, {"a": 1}, True),
        ({"x-match": "any", "x-foo": "bar"}, {"x-foo": "bar"}, False),
        ({"x-match": "any", "x-foo": "bar", "a": 1}, {"x-foo": "bar"}, False),
        # ...and take part with the -with-x variants.
        ({"x-match": "all-with-x", "x-foo": "bar", "a": 1}, {"a": 1}, False),
        ({"x-match": "all-with-x", "x-foo": "bar", "a": 1}, {"a": 1, "x-foo": "bar"}, True),
        ({"x-match": "any-with-x", "x-foo": "bar"}, {"x-foo": "bar"}, True),
        ({"x-match": "any-with-x", "x-foo": "bar", "a": 1}, {"x-foo": "baz", "a": 2}, False),
        # void binding values match the presence of the header, whatever its value
        ({"x-match": "all", "a": None}, {"a": "anything"}, True),
        ({"x-match": "all", "a": None}, {"a": None}, True),
        ({"x-match": "all", "a": None}, {"b": 1}, False),
        ({"x-match": "any", "a": None, "b": 1}, {"a": 5}, True),
        ({"x-match": "any", "a": None}, {}, False),
        # a void header does not equal a concrete binding value
        ({"x-match": "all", "a": 1}, {"a": None}, False),
        # wire integer kinds and longstr bytes compare by value
        ({"x-match": "all", "a": 1}, {"a": Int("b", 1)}, True),
        ({"x-match": "all", "a": Int("u", 7)}, {"a": 7}, True),
        ({"x-match": "all", "a": "x"}, {"a": b"x"}, True),
        ({"x-match": b"any", "a": 1}, {"a": 1}, True),
    ],
)
def test_matching(args, headers, expected):
    assert matches(args, headers) is expected


@pytest.mark.parametrize("mode", ["ALL", "some", "", 1, Int("b", 1), None, "all-with-y"])
def test_invalid_x_match_raises(mode):
    with pytest.raises(HeadersError):
        HeadersMatcher.validate({"x-match": mode})
    with pytest.raises(HeadersError):
        HeadersMatcher().add({"x-match": mode}, "q", b"")


def test_non_utf8_x_match_raises_headers_error():
    # A longstr that is not UTF-8 decodes to bytes (codec._longstr_value), so a client can send this;
    # the channel catches HeadersError only, to reply 406.
    with pytest.raises(HeadersError):
        HeadersMatcher.validate({"x-match": b"\xff"})


@pytest.mark.parametrize("mode", ["all", "any", "all-with-x", "any-with-x", b"all"])
def test_valid_x_match_is_accepted(mode):
    HeadersMatcher.validate({"x-match": mode, "a": 1})


def test_several_bindings_and_remove():
    m = HeadersMatcher()
    m.add({"x-match": "all", "a": 1}, "q1", b"k1")
    m.add({"x-match": "any", "a": 1, "b": 2}, "q2", b"k2")
    m.add({"x-match": "any", "b": 2}, "q2", b"k3")
    assert m.match({"a": 1}) == {"q1", "q2"}
    assert m.match({"b": 2}) == {"q2"}
    m.remove("q2", b"k2")
    assert m.match({"a": 1}) == {"q1"}
    assert m.match({"b": 2}) == {"q2"}
    m.remove("q2", b"nope")
    assert m.match({"b": 2}) == {"q2"}
    m.remove("q2", b"k3")
    m.remove("q1", b"k1")
    assert m.match({"a": 1, "b": 2}) == set()
