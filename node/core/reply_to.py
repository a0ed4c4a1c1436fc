"""Direct reply-to (RabbitMQ's `amq.rabbitmq.reply-to`): RPC replies straight to a consumer,
without a queue.

A channel consumes from the pseudo-queue `amq.rabbitmq.reply-to` (no-ack only) and publishes
requests with `reply_to: amq.rabbitmq.reply-to`; the node rewrites that to the channel's own
name, `amq.rabbitmq.reply-to.<node>.<token>`, which repliers publish to through the default
exchange. A reply goes to that consumer at once; when the consumer is gone the name routes
nowhere (dropped, or returned if mandatory), as in RabbitMQ. The name says which node holds the
consumer (its id, base64url), so a replier connected to another node reaches it over forwarding.

`ReplyTo` is a QueueHandle of its own kind: nothing is stored, nothing waits, nothing is in the
metadata (the broker keeps them by name, `Broker.reply_queues`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import secrets
from typing import Any

from .message import Message
from .outcome import Modified, Outcome
from .queue import Consumer, QueueOptions, resolved

PSEUDO_QUEUE = "amq.rabbitmq.reply-to"
PREFIX = PSEUDO_QUEUE + "."


def new_name(node_id: str) -> str:
    node = base64.urlsafe_b64encode(node_id.encode("utf-8")).decode("ascii").rstrip("=")
    return f"{PREFIX}{node}.{secrets.token_urlsafe(12)}"


def node_of(name: str) -> str | None:
    """The node a reply-to name's consumer is on (None: not a name this node made)."""
    if not name.startswith(PREFIX):
        return None
    encoded, _, token = name[len(PREFIX) :].partition(".")
    if not encoded or not token:
        return None
    try:
        return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None


class ReplyTo:
    """The reply consumer of one channel, as a queue the router can hand messages to."""

    led_here = True
    deleted = False
    congested = False
    deleting: asyncio.Future | None = None
    unacked = 0
    message_count = 0

    def __init__(self, vhost: str, name: str, leader: str) -> None:
        self.vhost = vhost
        self.name = name
        self.leader = leader
        self.consumer: Consumer | None = None
        # Told once the consumer is gone (the broker forgets the name then).
        self.on_closed: Any = None

    @property
    def consumer_count(self) -> int:
        return 1 if self.consumer is not None else 0

    @property
    def consumers(self) -> list[Consumer]:
        return [self.consumer] if self.consumer is not None else []

    def enqueue(self, msg: Message, confirm: bool = True) -> int:
        """Deliver at once (the consumer acknowledges nothing: there is nothing to keep)."""
        consumer = self.consumer
        if consumer is not None:
            consumer.deliver(self, msg)
        return 0

    def block_publisher(self, publisher: Any) -> None:
        pass  # never congested: replies go straight to the socket

    def subscribe(self, consumer: Consumer) -> None:
        self.consumer = consumer

    def unsubscribe(self, consumer: Consumer) -> None:
        if self.consumer is consumer:
            self.consumer = None
            self._closed()

    def _closed(self) -> None:
        callback, self.on_closed = self.on_closed, None
        if callback is not None:
            callback(self)

    def has_exclusive_consumer(self) -> bool:
        return False

    def kick(self) -> None:
        """Nothing waits here to be delivered."""

    def settle(self, msg: Message, outcome: Outcome, modified: Modified | None = None) -> None:
        """Replies are delivered no-ack: there is nothing to settle."""

    def release_many(self, msgs: list[Message]) -> None:
        """Replies are delivered no-ack: there is nothing to release."""

    def get(self, ack_required: bool) -> asyncio.Future:
        return resolved((None, 0))

    def purge(self) -> asyncio.Future:
        return resolved(0)

    def stats(self) -> asyncio.Future:
        return resolved((0, self.consumer_count))

    def touch(self) -> None:
        """No x-expires: it lives as long as its consumer."""

    def configure(self, options: QueueOptions) -> None:
        """No policies apply."""

    def delete(self, reason: str) -> int:
        consumer, self.consumer = self.consumer, None
        self.deleted = True
        self._closed()
        if consumer is not None:
            consumer.cancelled(self, reason)
        return 0
