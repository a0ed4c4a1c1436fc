"""Exchanges and their bindings: the routing table of one exchange, whatever its type."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..core.declare import DELAYABLE_TYPES, EXCHANGE_TYPES
from ..wire.table import encode_table
from .headers import HeadersMatcher
from .topic import TopicMatcher

# A binding destination: ("q", queue name) or ("e", exchange name).
Destination = tuple[str, str]


def args_key(arguments: dict[str, Any] | None) -> bytes:
    """A hashable identity for binding arguments, independent of their order."""
    if not arguments:
        return b""
    return encode_table(dict(sorted(arguments.items())))


@dataclass(frozen=True, slots=True)
class Binding:
    source: str
    destination: Destination
    routing_key: str
    arguments: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    key: bytes = b""

    @property
    def identity(self) -> tuple[str, Destination, str, bytes]:
        return (self.source, self.destination, self.routing_key, self.key)


class Exchange:
    """One exchange: its declared properties and the matcher for its type."""

    __slots__ = (
        "name",
        "type",
        "durable",
        "auto_delete",
        "internal",
        "arguments",
        "bindings",
        "kind",
        "_direct",
        "_fanout",
        "_topic",
        "_headers",
        "route",
    )

    def __init__(
        self,
        name: str,
        type: str,
        durable: bool = True,
        auto_delete: bool = False,
        internal: bool = False,
        arguments: dict[str, Any] | None = None,
    ) -> None:
        if type not in EXCHANGE_TYPES:
            raise ValueError(f"unknown exchange type {type!r}")
        kind = type
        if type == "x-delayed-message":
            # As the RabbitMQ plugin: routing follows x-delayed-type once the delay is over.
            delayed = (arguments or {}).get("x-delayed-type")
            kind = delayed.decode() if isinstance(delayed, bytes) else delayed
            if kind not in DELAYABLE_TYPES:
                raise ValueError(
                    "Invalid argument, 'x-delayed-type' must be an existing exchange type"
                )
        self.name = name
        self.type = type
        self.durable = durable
        self.auto_delete = auto_delete
        self.internal = internal
        self.arguments = arguments or {}
        self.bindings: dict[tuple, Binding] = {}
        self._direct: dict[str, dict[Destination, int]] = {}
        self._fanout: dict[Destination, int] = {}
        self.kind = kind  # the matcher in use (x-delayed-type for a delayed exchange)
        self._topic = TopicMatcher() if kind == "topic" else None
        self._headers = HeadersMatcher() if kind == "headers" else None
        # Bound once so routing pays no type dispatch per message.
        self.route = {
            "direct": self._route_direct,
            "fanout": self._route_fanout,
            "topic": self._route_topic,
            "headers": self._route_headers,
        }[kind]

    def add_binding(self, binding: Binding) -> bool:
        """Add a binding; False when an identical one exists already."""
        ident = binding.identity
        if ident in self.bindings:
            return False
        if self._headers is not None:
            HeadersMatcher.validate(binding.arguments)  # raises before anything is recorded
        self.bindings[ident] = binding
        dest = binding.destination
        if self.kind == "direct":
            dests = self._direct.setdefault(binding.routing_key, {})
            dests[dest] = dests.get(dest, 0) + 1
        elif self.kind == "fanout":
            self._fanout[dest] = self._fanout.get(dest, 0) + 1
        elif self._topic is not None:
            self._topic.add(binding.routing_key, dest)
        elif self._headers is not None:
            self._headers.add(binding.arguments, dest, ident)
        return True

    def remove_binding(self, ident: tuple) -> Binding | None:
        binding = self.bindings.pop(ident, None)
        if binding is None:
            return None
        dest = binding.destination
        if self.kind == "direct":
            dests = self._direct.get(binding.routing_key)
            if dests is not None:
                _decrement(dests, dest)
                if not dests:
                    del self._direct[binding.routing_key]
        elif self.kind == "fanout":
            _decrement(self._fanout, dest)
        elif self._topic is not None:
            self._topic.remove(binding.routing_key, dest)
        elif self._headers is not None:
            self._headers.remove(dest, ident)
        return binding

    def bindings_to(self, destination: Destination) -> list[Binding]:
        return [b for b in self.bindings.values() if b.destination == destination]

    def _route_direct(self, routing_key: str, headers_of) -> Any:
        return self._direct.get(routing_key, ())

    def _route_fanout(self, routing_key: str, headers_of) -> Any:
        return self._fanout

    def _route_topic(self, routing_key: str, headers_of) -> Any:
        return self._topic.match(routing_key)  # type: ignore[union-attr]

    def _route_headers(self, routing_key: str, headers_of) -> Any:
        return self._headers.match(headers_of())  # type: ignore[union-attr]


def _decrement(counts: dict, key: Any) -> None:
    n = counts.get(key, 0)
    if n <= 1:
        counts.pop(key, None)
    else:
        counts[key] = n - 1
