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
)
OVERFLOW_VALUES = ("drop-head", "reject-publish", "reject-publish-dlx")
QUEUE_TYPES = ("classic", "quorum", "stream")
QUEUE_MODES = ("default", "lazy")


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


def check_queue_declare(vhost: str, name: str, arguments: dict[str, Any] | None = None) -> None:
    """The rules of queue.declare (not passive) for a named queue: reserved name, arguments."""
    check_reserved_name("queue", name)
    check_queue_arguments(vhost, name, arguments)
