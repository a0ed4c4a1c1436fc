"""Topic routing as a trie of binding-key words (RabbitMQ semantics).

Words are separated by '.'; '*' matches exactly one word, '#' zero or more. The empty routing key
has no words, and empty words count ("a..b" is three words), as in RabbitMQ. Matching walks the trie
once per routing key, so the cost depends on the key and the shape of the bindings, not on how many
bindings there are; results are cached per routing key until the bindings change.
"""

from __future__ import annotations

from collections.abc import Hashable

_CACHE_LIMIT = 4096


def split_key(key: str) -> list[str]:
    return key.split(".") if key else []


class _Node:
    __slots__ = ("children", "destinations")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        # destination -> number of bindings ending here (same key bound twice with other args)
        self.destinations: dict[Hashable, int] = {}


class TopicMatcher:
    def __init__(self) -> None:
        self._root = _Node()
        self._cache: dict[str, frozenset] = {}

    def add(self, binding_key: str, destination: Hashable) -> None:
        node = self._root
        for word in split_key(binding_key):
            nxt = node.children.get(word)
            if nxt is None:
                nxt = node.children[word] = _Node()
            node = nxt
        node.destinations[destination] = node.destinations.get(destination, 0) + 1
        self._cache.clear()

    def remove(self, binding_key: str, destination: Hashable) -> None:
        path = [self._root]
        words = split_key(binding_key)
        for word in words:
            nxt = path[-1].children.get(word)
            if nxt is None:
                return
            path.append(nxt)
        leaf = path[-1]
        count = leaf.destinations.get(destination)
        if count is None:
            return
        if count > 1:
            leaf.destinations[destination] = count - 1
        else:
            del leaf.destinations[destination]
        # Prune empty branches so a churn of bindings does not leave a growing dead trie.
        for i in range(len(words), 0, -1):
            node = path[i]
            if node.children or node.destinations:
                break
            del path[i - 1].children[words[i - 1]]
        self._cache.clear()

    def match(self, routing_key: str) -> frozenset:
        hit = self._cache.get(routing_key)
        if hit is not None:
            return hit
        out: set = set()
        self._walk(self._root, split_key(routing_key), 0, out, set())
        result = frozenset(out)
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[routing_key] = result
        return result

    def _walk(self, node: _Node, words: list[str], i: int, out: set, seen: set) -> None:
        # `seen` memoises (node, position) so patterns like "#.#.#" stay linear, not exponential.
        mark = (id(node), i)
        if mark in seen:
            return
        seen.add(mark)
        children = node.children
        if i == len(words):
            out.update(node.destinations)
            # A trailing '#' matches zero words.
            hash_node = children.get("#")
            if hash_node is not None:
                self._walk(hash_node, words, i, out, seen)
            return
        nxt = children.get(words[i])
        if nxt is not None:
            self._walk(nxt, words, i + 1, out, seen)
        star = children.get("*")
        if star is not None:
            self._walk(star, words, i + 1, out, seen)
        hash_node = children.get("#")
        if hash_node is not None:
            # '#' swallows zero or more words: try every split point.
            for j in range(i, len(words) + 1):
                self._walk(hash_node, words, j, out, seen)

    def __len__(self) -> int:
        return sum(1 for _ in self._iter(self._root))

    def _iter(self, node: _Node):
        yield from node.destinations
        for child in node.children.values():
            yield from self._iter(child)
