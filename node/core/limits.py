"""Resource limits as RabbitMQ operators configure them: what they are, how they read, what a
refusal says.

- Per vhost (RabbitMQ's `vhost-limits` runtime parameter, `rabbitmqctl set_vhost_limits`):
  `max-connections` (client connections to the vhost) and `max-queues` (queues in it).
- Per user (`rabbitmqctl set_user_limits`): `max-connections` and `max-channels` (0-9-1 channels
  of all the user's connections).
- Per node: `--max-connections` (RabbitMQ's `connection_max`), client connections to this node.

As in RabbitMQ a negative value means no limit and 0 allows none: a limit of N refuses the
connection, channel or queue that would be the N+1st. The limits themselves are metadata
(node/metadata/state.py keeps them, replicated like everything else); the queue limit is checked
where a queue is created, in the state machine, so it holds cluster-wide without a race. Counting
connections and channels is the broker's (`Broker.check_connection`, `Broker.check_channel`):
this node's own, plus what the other nodes last reported (`ConnectionCounts`).

The refusal texts are RabbitMQ's (rabbit_reader, rabbit_amqp_reader, rabbit_vhost_limit), so
clients and operators see the same words; AMQP 1.0's differ from 0-9-1's where RabbitMQ 4's do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

VHOST_LIMITS = ("max-connections", "max-queues")
USER_LIMITS = ("max-connections", "max-channels")


def validate(component: str, allowed: tuple[str, ...], limits: Any) -> dict[str, int]:
    """`limits` as a plain {name: int}; ValueError (RabbitMQ's wording) for anything else.

    `component` names what is set in the message ("vhost-limits", "user-limits")."""
    if not isinstance(limits, dict):
        raise ValueError(f"{component} must be a JSON object, actually was {limits!r}")
    unknown = sorted(str(k) for k in limits if k not in allowed)
    if unknown:
        raise ValueError(
            f"Unrecognised terms {unknown} in {component} (known: {', '.join(allowed)})"
        )
    out: dict[str, int] = {}
    for name, value in limits.items():
        # JSON true is no number, nor is 10.5: RabbitMQ's parameter validation wants an integer.
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} should be a number, actually was {value!r}")
        out[str(name)] = value
    return out


def effective(limits: dict[str, int] | None, name: str) -> int | None:
    """The limit `name` sets, or None when there is none (absent or negative)."""
    if not limits:
        return None
    value = limits.get(name)
    if value is None or value < 0:
        return None
    return value


@dataclass
class ConnectionCounts:
    """Client connections per vhost and per user, and 0-9-1 channels per user: one node's
    (`Broker.connection_counts`), or the sum of several (`add`). The other nodes' reach this
    node with their forwarding pings (cluster/forwarding), about once a second."""

    vhost_connections: dict[str, int] = field(default_factory=dict)
    user_connections: dict[str, int] = field(default_factory=dict)
    user_channels: dict[str, int] = field(default_factory=dict)

    def add(self, other: ConnectionCounts) -> None:
        for mine, theirs in (
            (self.vhost_connections, other.vhost_connections),
            (self.user_connections, other.user_connections),
            (self.user_channels, other.user_channels),
        ):
            for key, n in theirs.items():
                mine[key] = mine.get(key, 0) + n


class LimitExceeded(Exception):
    """A connection or channel refused by a limit. `text` is what a 0-9-1 client is told
    (with 530 NOT_ALLOWED), `text10` what an AMQP 1.0 client is told (with
    amqp:resource-limit-exceeded)."""

    def __init__(self, text: str, text10: str | None = None) -> None:
        super().__init__(text)
        self.text = text
        self.text10 = text10 if text10 is not None else text


def node_connections_exceeded(limit: int) -> LimitExceeded:
    return LimitExceeded(f"connection refused: node connection limit ({limit}) is reached")


def vhost_connections_exceeded(vhost: str, user: str, limit: int) -> LimitExceeded:
    where = f"access to vhost '{vhost}' refused for user '{user}'"
    return LimitExceeded(
        f"{where}: connection limit ({limit}) is reached",
        f"{where}: vhost connection limit ({limit}) is reached",
    )


def user_connections_exceeded(user: str, limit: int) -> LimitExceeded:
    return LimitExceeded(
        f"connection refused for user '{user}': user connection limit ({limit}) is reached"
    )


def user_channels_exceeded(user: str, limit: int) -> LimitExceeded:
    return LimitExceeded(
        f"number of channels opened for user '{user}' has reached the maximum allowed user "
        f"limit of {limit}"
    )


def queue_limit_text(vhost: str, queue: str, limit: int) -> str:
    return f"cannot declare queue '{queue}': queue limit in vhost '{vhost}' ({limit}) is reached"
