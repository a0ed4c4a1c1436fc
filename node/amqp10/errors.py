"""AMQP 1.0 errors raised by the state machine, each ending one scope with an amqp: condition."""

from __future__ import annotations


class _AMQPError(Exception):
    def __init__(self, condition: str, description: str) -> None:
        super().__init__(f"{condition}: {description}")
        self.condition = condition
        self.description = description


class ConnectionError10(_AMQPError):
    """Closes the connection."""


class SessionError10(_AMQPError):
    """Ends the session."""


class LinkError10(_AMQPError):
    """Detaches the link (closed)."""
