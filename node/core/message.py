"""The one internal message both protocol front ends map onto."""

from __future__ import annotations

from typing import Any

from ..wire.properties import (
    FLAG_HEADERS,
    FLAG_PRIORITY,
    decode_properties,
    delivery_mode,
    flags_of,
)
from ..wire.table import DecodeError, encode_shortstr


class Message:
    """Body + properties as they arrived, plus the per-queue delivery state.

    `props_raw` holds the 0-9-1 content-header property bytes (flags + list) exactly as published,
    and `route_raw` the exchange and routing key as two shortstrs, so that basic.deliver sends them
    on without decoding or re-encoding. `seq`, `redelivered` and `delivery_count` belong to one
    queue: a message routed to several queues is copied (shallowly; the body is shared).
    """

    __slots__ = (
        "exchange",
        "routing_key",
        "route_raw",
        "props_raw",
        "body",
        "_props",
        "seq",
        "redelivered",
        "delivery_count",
        "publisher",
        "stored",
        "expires",
        "queued",
        "dead",
        "excluded",
        "annotations",
        "amqp10",
        "deaths",
    )

    def __init__(
        self,
        exchange: str,
        routing_key: str,
        route_raw: bytes | None,
        props_raw: bytes,
        body: bytes,
    ) -> None:
        self.exchange = exchange
        self.routing_key = routing_key
        self.route_raw = (
            route_raw
            if route_raw is not None
            else encode_shortstr(exchange) + encode_shortstr(routing_key)
        )
        self.props_raw = props_raw
        self.body = body
        self._props: dict[str, Any] | None = None
        self.seq = 0
        self.redelivered = False
        self.delivery_count = 0
        # The connection that published it (for no_local consumers); None when not applicable.
        self.publisher: object | None = None
        # True once the message has a row in the store (persistent, or paged out).
        self.stored = False
        self.expires = 0.0  # wall-clock deadline (TTL), 0 = none
        self.queued = False  # in its queue's ready list (not delivered)
        self.dead = False  # left the ready list from the middle (expired): skip it there
        self.excluded: set[int] | None = None  # consumers it is undeliverable to (1.0 modified)
        self.annotations: dict[str, Any] | None = None  # message-annotations merged by modified
        self.deaths: list[dict[str, Any]] | None = None  # x-death as built by dead-lettering
        self.amqp10: tuple | None = None  # its AMQP 1.0 encoding around the body (node.amqp10)

    @classmethod
    def from_stored(cls, route_raw: bytes, props_raw: bytes, body: bytes) -> Message:
        elen = route_raw[0]
        exchange = route_raw[1 : 1 + elen].decode("utf-8")
        routing_key = route_raw[2 + elen :].decode("utf-8")
        return cls(exchange, routing_key, bytes(route_raw), bytes(props_raw), bytes(body))

    @property
    def persistent(self) -> bool:
        return delivery_mode(self.props_raw) == 2

    @property
    def properties(self) -> dict[str, Any]:
        props = self._props
        if props is None:
            try:
                props = decode_properties(self.props_raw) if self.props_raw else {}
            except DecodeError:
                props = {}
            self._props = props
        return props

    def headers(self) -> dict[str, Any]:
        if not flags_of(self.props_raw) & FLAG_HEADERS:
            return {}
        return self.properties.get("headers") or {}

    def copy(self) -> Message:
        m = Message.__new__(Message)
        m.exchange = self.exchange
        m.routing_key = self.routing_key
        m.route_raw = self.route_raw
        m.props_raw = self.props_raw
        m.body = self.body
        m._props = self._props
        m.seq = 0
        m.redelivered = False
        m.delivery_count = 0
        m.publisher = self.publisher
        m.stored = False
        m.expires = 0.0
        m.queued = False
        m.dead = False
        m.excluded = None
        m.annotations = self.annotations
        m.amqp10 = self.amqp10
        return m

    @property
    def priority(self) -> int:
        if not flags_of(self.props_raw) & FLAG_PRIORITY:
            # AMQP 1.0 leaves the default priority (4) out of the header; 0-9-1's default is 0.
            return 4 if self.amqp10 is not None else 0
        return self.properties.get("priority") or 0

    @property
    def size(self) -> int:
        return len(self.body)
