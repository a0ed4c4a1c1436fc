"""The one internal message both protocol front ends map onto: a container with per-protocol views.

Why this shape (RabbitMQ 4's `mc` with its mc_amqpl and mc_amqp modules is the model): a message
arrives in one protocol and may leave in the other, and converting it costs far more than moving it.
So the message records the protocol it arrived in (`protocol`, AMQP091 or AMQP10) and keeps each
protocol's encoding as a view, made at most once and then cached on the message:

* the 0-9-1 view is `route_raw` + `props_raw` (the exchange and routing key as two shortstrs, and the
  content header's property bytes). It is also the core's canonical form: routing (headers exchange),
  TTL, persistence, priority, dead-lettering, the store and the forwarding packer all read it, which
  is why a 1.0 publish makes it at once (node.amqp10.message.convert, which caches conversions by
  the publisher's repeated section prefix, so most transfers convert by one lookup) rather than
  lazily. A 0-9-1 publish and a 0-9-1 delivery pass these bytes through untouched (the fast path).
* the 1.0 view is `amqp10`: the sections around the body (node.amqp10.message's cache tuple). A 1.0
  publish makes it for free (slices of the transfer); for a message that arrived in 0-9-1 (or came
  back from the store) a 1.0 consumer's first delivery converts it once and caches it here.

Facts whose meaning depends on the protocol come from `protocol`, never from which views happen to
be cached: 1.0's default priority is 4 (the header leaves it out), 0-9-1's is 0. The store and the
forwarding packer keep the 0-9-1 view only, so a recovered or forwarded message counts as 0-9-1.

Cost: `Message` is the hottest object in the broker. Views are plain slots (no view objects, no
per-message allocation beyond the message itself), `protocol` is one of two interned strings, and a
message routed to several queues is copied shallowly, sharing its views.
"""

from __future__ import annotations

from typing import Any

from ..wire.properties import (
    FLAG_HEADERS,
    FLAG_PRIORITY,
    decode_properties,
    delivery_mode,
    flags_of,
    set_header,
)
from ..wire.table import DecodeError, Int, encode_shortstr

# The protocol a message arrived in (Message.protocol); also names its views.
AMQP091 = "amqp091"
AMQP10 = "amqp10"


class Message:
    """Body + the protocol views of its properties, plus the per-queue delivery state.

    `props_raw` holds the 0-9-1 content-header property bytes (flags + list), exactly as published
    over 0-9-1, and `route_raw` the exchange and routing key as two shortstrs, so that basic.deliver
    sends them on without decoding or re-encoding; `amqp10` is the 1.0 view (see the module
    docstring). `seq`, `redelivered` and `delivery_count` belong to one queue: a message routed to
    several queues is copied (shallowly; the body and the views are shared).
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
        "protocol",
    )

    def __init__(
        self,
        exchange: str,
        routing_key: str,
        route_raw: bytes | None,
        props_raw: bytes,
        body: bytes,
        protocol: str = AMQP091,
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
        self.amqp10: tuple | None = None  # the 1.0 view: its sections around the body
        self.protocol = protocol  # AMQP091 or AMQP10: the protocol it arrived in

    @classmethod
    def from_stored(cls, route_raw: bytes, props_raw: bytes, body: bytes) -> Message:
        """A message read back from the store or a forwarding record (the 0-9-1 view only)."""
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

    def props_with_delivery_count(self) -> bytes:
        """The 0-9-1 property bytes with the `x-delivery-count` header a quorum queue adds to a
        message that failed delivery before (a long, as RabbitMQ sends it). Made per delivery,
        not cached: only a message with a delivery count pays, and a first delivery sends
        `props_raw` untouched. Malformed property bytes go out as they came."""
        try:
            return set_header(self.props_raw, "x-delivery-count", Int("l", self.delivery_count))
        except DecodeError:
            return self.props_raw

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
        m.deaths = self.deaths
        m.protocol = self.protocol
        return m

    @property
    def priority(self) -> int:
        if not flags_of(self.props_raw) & FLAG_PRIORITY:
            # AMQP 1.0 leaves the default priority (4) out of the header; 0-9-1's default is 0.
            return 4 if self.protocol == AMQP10 else 0
        return self.properties.get("priority") or 0

    @property
    def size(self) -> int:
        return len(self.body)
