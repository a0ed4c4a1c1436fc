"""The one settlement vocabulary of the core: the AMQP 1.0 terminal outcomes (see docs/architecture.md)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class Outcome(Enum):
    ACCEPTED = "accepted"  # 0-9-1 basic.ack: the message is gone
    REJECTED = (
        "rejected"  # reject/nack requeue=false: dead-lettered if the queue has a DLX, else dropped
    )
    RELEASED = (
        "released"  # requeue, close, cancel: back to the queue, redelivered, count not charged
    )
    MODIFIED = (
        "modified"  # 1.0 only: released, optionally charging the count / avoiding this consumer
    )


@dataclass(frozen=True, slots=True)
class Modified:
    delivery_failed: bool = False
    undeliverable_here: bool = False
    annotations: dict[str, Any] = field(default_factory=dict)
    consumer: Any = None  # the consumer `undeliverable_here` refers to


ACCEPTED = Outcome.ACCEPTED
REJECTED = Outcome.REJECTED
RELEASED = Outcome.RELEASED
MODIFIED = Outcome.MODIFIED
