"""Queue options from x-arguments and policies, as RabbitMQ reads them.

A policy's definition uses the names without the `x-` prefix ("max-length"); a queue's own
arguments override the policy's, as in RabbitMQ (for the numeric limits RabbitMQ takes the smaller
of the two; this is documented there for max-length and message-ttl and done here the same way).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..wire.table import as_int

# Policy key -> queue argument.
POLICY_KEYS = {
    "message-ttl": "x-message-ttl",
    "expires": "x-expires",
    "max-length": "x-max-length",
    "max-length-bytes": "x-max-length-bytes",
    "overflow": "x-overflow",
    "dead-letter-exchange": "x-dead-letter-exchange",
    "dead-letter-routing-key": "x-dead-letter-routing-key",
    "delivery-limit": "x-delivery-limit",
    "consumer-timeout": "x-consumer-timeout",
}
# Limits where RabbitMQ applies the stricter of policy and argument.
_MIN_OF_BOTH = (
    "x-message-ttl",
    "x-max-length",
    "x-max-length-bytes",
    "x-expires",
    "x-delivery-limit",
    # RabbitMQ 3.12+ takes the smaller of x-consumer-timeout and the consumer-timeout policy key
    # (rabbit_channel's get_queue_consumer_timeout: args_policy_lookup with min).
    "x-consumer-timeout",
)


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


@dataclass(frozen=True)
class QueueOptions:
    message_ttl: int | None = None  # ms
    expires: int | None = None  # ms of disuse before the queue is deleted
    max_length: int | None = None
    max_length_bytes: int | None = None
    overflow: str = "drop-head"
    dlx: str | None = None
    dlrk: str | None = None
    max_priority: int | None = None
    single_active_consumer: bool = False
    delivery_limit: int | None = None
    # A quorum queue (x-queue-type): a 0-9-1 requeue counts toward its delivery limit.
    quorum: bool = False
    # ms a 0-9-1 delivery from this queue may stay unacknowledged before its channel is closed
    # (x-consumer-timeout / consumer-timeout); None: the node's --consumer-timeout applies.
    consumer_timeout: int | None = None

    @property
    def limited(self) -> bool:
        return self.max_length is not None or self.max_length_bytes is not None


# RabbitMQ 4's default delivery limit of a quorum queue (3.x had none): a poison message is
# dead-lettered, or dropped, after 20 failed deliveries instead of looping for ever.
QUORUM_DELIVERY_LIMIT = 20


def _non_negative(value: Any) -> bool:
    i = as_int(value)
    return i is not None and i >= 0


def effective_arguments(
    arguments: dict[str, Any], policy_definition: dict[str, Any] | None
) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for key, value in (policy_definition or {}).items():
        arg = POLICY_KEYS.get(key)
        if arg == "x-consumer-timeout" and not _non_negative(value):
            # Policies are not validated when set; RabbitMQ refuses this one ("is not a valid
            # consumer timeout"). Skipped here, so it cannot win the min over a good argument.
            continue
        if arg is not None:
            merged[arg] = value
    for key, value in arguments.items():
        if key in _MIN_OF_BOTH and key in merged:
            a, b = as_int(value), as_int(merged[key])
            if a is not None and b is not None:
                merged[key] = min(a, b)
                continue
        merged[key] = value
    return merged


# Where a new queue's leader goes (RabbitMQ 3.10+'s queue leader locators): on the node of the
# connection that declares it, or on the live node leading the fewest queues.
CLIENT_LOCAL = "client-local"
BALANCED = "balanced"
LEADER_LOCATORS = (CLIENT_LOCAL, BALANCED)
# What each accepted value of x-queue-leader-locator / queue-leader-locator means. RabbitMQ 3.10+
# still takes its older strategies, deprecated, as balanced.
_LEADER_LOCATOR_VALUES = {
    CLIENT_LOCAL: CLIENT_LOCAL,
    BALANCED: BALANCED,
    "random": BALANCED,
    "least-leaders": BALANCED,
}
# x-queue-master-locator / queue-master-locator, the name before 3.10 (mirrored classic queues),
# with its own values; 3.10+ reads min-masters and random as balanced.
_MASTER_LOCATOR_VALUES = {CLIENT_LOCAL: CLIENT_LOCAL, "min-masters": BALANCED, "random": BALANCED}
# (policy key, argument, accepted values, the values an error names), in RabbitMQ's order of
# precedence. An error names only the current leader locators, not the deprecated ones.
LOCATOR_KEYS = (
    (
        "queue-leader-locator",
        "x-queue-leader-locator",
        _LEADER_LOCATOR_VALUES,
        "client-local or balanced",
    ),
    (
        "queue-master-locator",
        "x-queue-master-locator",
        _MASTER_LOCATOR_VALUES,
        "client-local, min-masters or random",
    ),
)


def leader_locator(
    arguments: dict[str, Any], policy_definition: dict[str, Any] | None, default: str
) -> str:
    """The placement of a new queue, client-local or balanced, as RabbitMQ 3.10+ decides it
    (rabbit_queue_location:leader_locator): the leader locator, else the master locator, each
    from the queue's policy or else its argument (the policy wins, unlike the limits above),
    else the node's setting (`default`). A policy value no locator knows is skipped: policies
    set before the check existed could hold one, and declarations refuse bad arguments."""
    policy = policy_definition or {}
    for policy_key, arg, values, _ in LOCATOR_KEYS:
        for value in (_text(policy.get(policy_key)), _text(arguments.get(arg))):
            if value in values:
                return values[value]
    return default


def parse(arguments: dict[str, Any]) -> QueueOptions:
    def num(key: str) -> int | None:
        v = arguments.get(key)
        return as_int(v) if v is not None else None

    sac = arguments.get("x-single-active-consumer")
    max_priority = num("x-max-priority")
    quorum = _text(arguments.get("x-queue-type")) == "quorum"
    limit = num("x-delivery-limit")
    consumer_timeout = num("x-consumer-timeout")
    if consumer_timeout is not None and consumer_timeout < 0:
        # Declarations refuse it (core.declare) and effective_arguments skips a policy's: only
        # metadata written before those checks can still hold one.
        consumer_timeout = None
    if quorum and limit is None:
        limit = QUORUM_DELIVERY_LIMIT
    return QueueOptions(
        message_ttl=num("x-message-ttl"),
        expires=num("x-expires"),
        max_length=num("x-max-length"),
        max_length_bytes=num("x-max-length-bytes"),
        overflow=_text(arguments.get("x-overflow")) or "drop-head",
        dlx=_text(arguments.get("x-dead-letter-exchange")),
        dlrk=_text(arguments.get("x-dead-letter-routing-key")),
        max_priority=min(max_priority, 255) if max_priority else None,
        single_active_consumer=sac is True,
        delivery_limit=limit,
        quorum=quorum,
        consumer_timeout=consumer_timeout,
    )
