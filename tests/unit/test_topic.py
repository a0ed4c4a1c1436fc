"""node.routing.topic.TopicMatcher against a plain recursive matcher of RabbitMQ's semantics."""

from __future__ import annotations

import random
from collections import Counter
from functools import cache

from hypothesis import given, settings
from hypothesis import strategies as st

from merpati.node.routing.topic import TopicMatcher


def words(key: str) -> tuple[str, ...]:
    # The empty key has no words; otherwise every '.'-separated word counts, empty ones too.
    return tuple(key.split(".")) if key else ()


@cache
def ref_match_words(pattern: tuple[str, ...], key: tuple[str, ...]) -> bool:
    if not pattern:
        return not key
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return any(ref_match_words(rest, key[i:]) for i in range(len(key) + 1))
    if not key:
        return False
    if head == "*" or head == key[0]:
        return ref_match_words(rest, key[1:])
    return False


def ref_match(binding_key: str, routing_key: str) -> bool:
    return ref_match_words(words(binding_key), words(routing_key))


def ref_route(bindings: Counter, routing_key: str) -> frozenset:
    return frozenset(d for (k, d), n in bindings.items() if n > 0 and ref_match(k, routing_key))


def test_reference_matcher_sanity():
    # Examples from the RabbitMQ tutorials, to check the reference itself.
    assert ref_match("*.orange.*", "quick.orange.rabbit")
    assert not ref_match("*.orange.*", "quick.orange.male.rabbit")
    assert ref_match("lazy.#", "lazy.orange.male.rabbit")
    assert ref_match("lazy.#", "lazy")
    assert ref_match("#", "")
    assert ref_match("", "")
    assert not ref_match("", "a")
    assert not ref_match("*", "")
    assert ref_match("*", ".") is False  # "." is two empty words
    assert ref_match("*.*", ".")
    assert ref_match("a.*.b", "a..b")


ROUTING_WORDS = st.sampled_from(["", "a", "b", "ab"])
BINDING_WORDS = st.sampled_from(["", "a", "b", "*", "#"])
routing_keys = st.lists(ROUTING_WORDS, max_size=5).map(".".join)
binding_keys = st.lists(BINDING_WORDS, max_size=5).map(".".join)


@settings(max_examples=200, deadline=None)
@given(st.lists(binding_keys, max_size=12), st.lists(routing_keys, min_size=1, max_size=12))
def test_matches_the_reference(bkeys, rkeys):
    m = TopicMatcher()
    model: Counter = Counter()
    for i, k in enumerate(bkeys):
        m.add(k, i)
        model[(k, i)] += 1
    for rk in rkeys:
        assert m.match(rk) == ref_route(model, rk), (bkeys, rk)


# add/remove sequences: ("add"|"remove", binding key, destination) interleaved with lookups.
ops = st.lists(
    st.tuples(
        st.sampled_from(["add", "add", "remove", "match"]),
        binding_keys,
        st.integers(0, 3),
        routing_keys,
    ),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(ops)
def test_add_remove_keeps_results_consistent(operations):
    m = TopicMatcher()
    model: Counter = Counter()
    added: list[tuple[str, int]] = []
    for op, key, dest, rk in operations:
        if op == "add":
            m.add(key, dest)
            model[(key, dest)] += 1
            added.append((key, dest))
        elif op == "remove":
            # Remove something that exists half of the time, something arbitrary otherwise.
            if added and dest % 2 == 0:
                key, dest = added.pop(dest % len(added))
            m.remove(key, dest)
            if model[(key, dest)] > 0:
                model[(key, dest)] -= 1
            if (key, dest) in added and model[(key, dest)] < added.count((key, dest)):
                added.remove((key, dest))
        # Matching after every step also checks that the cache is invalidated.
        assert m.match(rk) == ref_route(model, rk), (operations, rk)
    assert len(m) == len({kd for kd, n in model.items() if n > 0})
    # Removing everything leaves an empty trie (no dead branches).
    for (key, dest), n in list(model.items()):
        for _ in range(n):
            m.remove(key, dest)
    assert len(m) == 0
    assert m._root.children == {} and m._root.destinations == {}


def test_same_key_bound_twice_needs_two_removes():
    m = TopicMatcher()
    m.add("a.*", "q")
    m.add("a.*", "q")
    m.remove("a.*", "q")
    assert m.match("a.b") == {"q"}
    m.remove("a.*", "q")
    assert m.match("a.b") == frozenset()


def test_removing_an_unknown_binding_is_harmless():
    m = TopicMatcher()
    m.add("a.b", "q")
    m.remove("a.c", "q")
    m.remove("a.b", "other")
    m.remove("a", "q")
    m.remove("a.b.c", "q")
    assert m.match("a.b") == {"q"}


def test_pathological_hash_patterns_stay_fast():
    m = TopicMatcher()
    m.add("#.#.#.#.#.#.#.#.#.#.x", "q")
    key = ".".join(["a"] * 60)
    assert m.match(key) == frozenset()
    assert m.match(key + ".x") == {"q"}


def test_literal_star_and_hash_words_in_routing_keys():
    m = TopicMatcher()
    m.add("a.b", "literal")
    m.add("*.*", "star")
    assert m.match("*.#") == {"star"}
    assert m.match("a.b") == {"literal", "star"}


def test_ten_thousand_bindings():
    rng = random.Random(1234)
    vocab = [f"w{i}" for i in range(12)] + [""]
    pattern_vocab = vocab + ["*", "*", "#", "#"]
    m = TopicMatcher()
    model: Counter = Counter()
    for i in range(10_000):
        key = ".".join(rng.choice(pattern_vocab) for _ in range(rng.randint(0, 4)))
        dest = i % 2500
        m.add(key, dest)
        model[(key, dest)] += 1
    assert len(m) == len(model)
    rkeys = [".".join(rng.choice(vocab) for _ in range(rng.randint(0, 5))) for _ in range(60)]
    for rk in rkeys:
        assert m.match(rk) == ref_route(model, rk), rk
    # Remove half of them and check again.
    for key, dest in list(model)[::2]:
        for _ in range(model[(key, dest)]):
            m.remove(key, dest)
        del model[(key, dest)]
    for rk in rkeys[:30]:
        assert m.match(rk) == ref_route(model, rk), rk
