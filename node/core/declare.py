"""Declaration rules in one place: what a queue or exchange declaration may say.

Every front end that declares (the AMQP 0-9-1 channel, the management API, definitions import)
calls these pure functions before it proposes a metadata command. They raise `DeclareError`
carrying the AMQP 0-9-1 reply code and the text RabbitMQ gives, and each front end maps it to its
own answer: a channel or connection close in 0-9-1, an HTTP error in the management API.

The checks cover the declaration itself (names, exchange types, argument types and ranges); what
depends on the current metadata (equivalence with an existing queue or exchange, exclusivity,
permissions) is checked by the metadata state and the broker, not here.
"""

from __future__ import annotations

import operator
from typing import Any

from .queue_args import LOCATOR_KEYS

# AMQP 0-9-1 reply codes (the same numbers as node/amqp091/constants.py, kept here so the core
# does not depend on a protocol front end).
ACCESS_REFUSED = 403
PRECONDITION_FAILED = 406
COMMAND_INVALID = 503

# Exchange types (node/routing/exchange.py routes them and takes these from here).
EXCHANGE_TYPES = ("direct", "fanout", "topic", "headers", "x-delayed-message")
# The types an x-delayed-message exchange may route with once a message's delay is over.
DELAYABLE_TYPES = ("direct", "fanout", "topic", "headers")
RESERVED_PREFIX = "amq."

# Queue arguments that must be non-negative integers (x-expires also non-zero, x-max-priority at
# most 255).
INT_ARGS = (
    "x-expires",
    "x-message-ttl",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-priority",
    "x-delivery-limit",
    # RabbitMQ does not check this one at declare (its channel then applies no timeout for a
    # non-integer and times out every delivery for a negative one); refusing it tells the client
    # at once.
    "x-consumer-timeout",
)
OVERFLOW_VALUES = ("drop-head", "reject-publish", "reject-publish-dlx")
QUEUE_TYPES = ("classic", "quorum", "stream")
QUEUE_MODES = ("default", "lazy")
# Arguments RabbitMQ knows only for its other queue types (classic: priorities, lazy mode,
# version, master locator; streams: retention and segments) and refuses on a quorum queue
# (rabbit_amqqueue:check_declare_arguments refuses every argument of another type's
# capabilities). Accepting them would hand the client a queue that silently ignores them.
QUORUM_UNSUPPORTED_ARGS = frozenset(
    {
        "x-max-priority",
        "x-queue-mode",
        "x-queue-version",
        "x-queue-master-locator",
        "x-max-age",
        "x-stream-max-segment-size-bytes",
        "x-stream-filter-size-bytes",
        "x-initial-cluster-size",
    }
)
# How RabbitMQ names the quorum queue type in its error texts (the module, printed with ~tp).
QUORUM_TYPE_NAME = "rabbit_quorum_queue"


class DeclareError(Exception):
    """A declaration that must be refused; `code` is the AMQP 0-9-1 reply code."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text

    @property
    def hard(self) -> bool:
        """True when AMQP 0-9-1 closes the connection for it (503), not just the channel."""
        return self.code == COMMAND_INVALID


def _int(value: Any) -> int | None:
    """The integer in a field value (plain int or a typed wrapper with __index__), else None."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def _text(value: Any) -> str | None:
    """A string field value as str (0-9-1 gives bytes for non-UTF-8 longstr), else None."""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return None


def check_reserved_name(kind: str, name: str) -> None:
    """Refuse a new `kind` ("queue" or "exchange") named with the reserved `amq.` prefix."""
    if name.startswith(RESERVED_PREFIX):
        raise DeclareError(ACCESS_REFUSED, f"{kind} name '{name}' contains reserved prefix 'amq.*'")


def check_not_default_exchange(name: str) -> None:
    """The default exchange ("") cannot be declared (passive or not), deleted or bound, as in
    RabbitMQ."""
    if not name:
        raise DeclareError(ACCESS_REFUSED, "operation not permitted on the default exchange")


def check_exchange_declare(
    vhost: str,
    name: str,
    type_: str,
    arguments: dict[str, Any] | None = None,
    *,
    exists: bool = False,
) -> None:
    """The rules of exchange.declare (not passive). `exists`: the exchange is already declared
    (redeclaring an existing amq.* exchange equivalently is allowed, as in RabbitMQ)."""
    args = arguments or {}
    check_not_default_exchange(name)
    if type_ not in EXCHANGE_TYPES:
        raise DeclareError(COMMAND_INVALID, f"invalid exchange type '{type_}'")
    if type_ == "x-delayed-message" and _text(args.get("x-delayed-type")) not in DELAYABLE_TYPES:
        raise DeclareError(
            PRECONDITION_FAILED,
            "Invalid argument, 'x-delayed-type' must be an existing exchange type",
        )
    if not exists:
        check_reserved_name("exchange", name)
    ae = args.get("alternate-exchange")
    if ae is not None and _text(ae) is None:
        raise DeclareError(
            PRECONDITION_FAILED,
            f"invalid arg 'alternate-exchange' for exchange '{name}' in vhost '{vhost}': "
            "expected a string",
        )


def check_queue_arguments(vhost: str, name: str, arguments: dict[str, Any] | None) -> None:
    """Refuse queue arguments of the wrong type or range with 406, as RabbitMQ does."""
    args = arguments or {}

    def bad(key: str, why: str) -> DeclareError:
        return DeclareError(
            PRECONDITION_FAILED, f"invalid arg '{key}' for queue '{name}' in vhost '{vhost}': {why}"
        )

    for key in INT_ARGS:
        if key not in args:
            continue
        value = _int(args[key])
        if value is None:
            raise bad(key, f"expected an integer, got {args[key]!r}")
        if (
            value < 0
            or (key == "x-expires" and value == 0)
            or (key == "x-max-priority" and value > 255)
        ):
            raise bad(key, f"value {value} is out of range")
    for key, allowed in (
        ("x-overflow", OVERFLOW_VALUES),
        ("x-queue-type", QUEUE_TYPES),
        ("x-queue-mode", QUEUE_MODES),
    ):
        value = args.get(key)
        if value is not None and value not in allowed:
            raise bad(key, repr(value))
    for key in ("x-dead-letter-exchange", "x-dead-letter-routing-key"):
        value = args.get(key)
        if value is not None and _text(value) is None:
            raise bad(key, f"expected a string, got {value!r}")
    if args.get("x-dead-letter-routing-key") is not None and "x-dead-letter-exchange" not in args:
        raise bad("x-dead-letter-routing-key", "no x-dead-letter-exchange is given")
    sac = args.get("x-single-active-consumer")
    if sac is not None and not isinstance(sac, bool):
        raise bad("x-single-active-consumer", f"expected a boolean, got {sac!r}")
    for _, key, values, expected in LOCATOR_KEYS:
        value = args.get(key)
        if value is not None and _text(value) not in values:
            raise bad(key, f"expected {expected}, got {value!r}")


def check_policy_definition(definition: dict[str, Any]) -> str | None:
    """Why a policy definition cannot be set (None: it can). Only the keys that decide where a
    queue goes are checked: a bad one would otherwise be skipped silently at every declare."""
    for policy_key, _, values, expected in LOCATOR_KEYS:
        value = definition.get(policy_key)
        if value is not None and _text(value) not in values:
            return f"{value!r} is not a valid {policy_key} value (expected {expected})"
    return None


def check_queue_declare(vhost: str, name: str, arguments: dict[str, Any] | None = None) -> None:
    """The rules of queue.declare (not passive) for a named queue: reserved name, arguments."""
    check_reserved_name("queue", name)
    check_queue_arguments(vhost, name, arguments)


def declared_queue_type(
    arguments: dict[str, Any] | None,
    *,
    durable: bool,
    exclusive: bool,
    auto_delete: bool,
    default_type: str = "classic",
) -> str:
    """The type a queue declaration asks for: its x-queue-type, else the node's default type when
    the queue can be of it (only a durable, non-exclusive, non-auto-delete queue can be quorum),
    else classic. RabbitMQ's augment_declare_args applies a default type the same way, so
    temporary queues stay classic under a quorum default."""
    explicit = _text((arguments or {}).get("x-queue-type"))
    if explicit is not None:
        return explicit
    if default_type == "quorum" and durable and not exclusive and not auto_delete:
        return "quorum"
    return "classic"


def check_server_named(queue_type: str) -> None:
    """A quorum queue cannot have a server-generated name (RabbitMQ's channel refuses it before
    anything else, capabilities' server_named => false)."""
    if queue_type == "quorum":
        raise DeclareError(
            PRECONDITION_FAILED,
            f"Cannot declare a server-named queue for type {QUORUM_TYPE_NAME}",
        )


def check_quorum_declare(
    vhost: str,
    name: str,
    arguments: dict[str, Any] | None,
    *,
    durable: bool,
    exclusive: bool,
    auto_delete: bool,
    default_type: str = "classic",
) -> None:
    """The rules of a new quorum queue, with RabbitMQ's texts and order: arguments only other
    queue types know (rabbit_amqqueue:check_declare_arguments), then the properties a replicated
    queue cannot have, auto-delete, exclusive and non-durable (rabbit_quorum_queue:declare, via
    rabbit_queue_type_util). A declaration of another type passes untouched.

    RabbitMQ checks these only when the queue does not exist yet (an existing queue gets the
    equivalence check instead), so callers do the same."""
    qtype = declared_queue_type(
        arguments,
        durable=durable,
        exclusive=exclusive,
        auto_delete=auto_delete,
        default_type=default_type,
    )
    if qtype != "quorum":
        return
    resource = f"queue '{name}' in vhost '{vhost}'"
    for key in arguments or {}:
        if key in QUORUM_UNSUPPORTED_ARGS:
            raise DeclareError(
                PRECONDITION_FAILED,
                f"invalid arg '{key}' for {resource} of queue type {QUORUM_TYPE_NAME}",
            )
    for refused, prop in (
        (auto_delete, "auto-delete"),
        (exclusive, "exclusive-owner"),
        (not durable, "non-durable"),
    ):
        if refused:
            raise DeclareError(PRECONDITION_FAILED, f"invalid property '{prop}' for {resource}")
