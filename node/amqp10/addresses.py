"""RabbitMQ addresses of AMQP 1.0 link terminuses and of messages' `to`.

Addresses are RabbitMQ 4's v2 addresses: targets /exchanges/NAME/KEY, /exchanges/NAME (key from
the subject), /queues/NAME, or none (each message's `to` names one of these); sources /queues/NAME.
RabbitMQ 3.x's v1 forms are accepted too, as 3.x users (and the AMQP 1.0 examples of every other
broker) write them:

    /amq/queue/NAME          the queue NAME, which must exist
    /queue/NAME              the queue NAME, declared (durable) at attach if missing
    NAME (no leading /)      the same as /queue/NAME: rhea's and qpid-proton's examples
    /exchange/NAME[/KEY]     target: the exchange NAME (key from the subject if none); source:
                             a queue of the link's own bound to NAME with KEY ("" if none)
    /topic/KEY               amq.topic with KEY, the same way

The session (node.amqp10.session) checks a link's address at attach; a ReceiverLink
(node.amqp10.links) parses each message's `to` on an anonymous link.
"""

from __future__ import annotations

from urllib.parse import unquote


class BadAddress(Exception):
    """An address that names no queue or exchange in a form this node understands."""


def _segment(raw: str) -> str:
    if not raw:
        raise BadAddress("empty name")
    return unquote(raw)


def declared_on_attach(address: str) -> str | None:
    """The queue an attach to `address` declares when it is missing (v1 /queue/NAME and plain
    names, as RabbitMQ 3.x), else None."""
    if address.startswith("/queue/"):
        return _segment(address[len("/queue/") :])
    if address and not address.startswith("/"):
        return address
    return None


def parse_target(address: str) -> tuple[str, str | None]:
    """(exchange, routing key or None to take the message's subject)."""
    if address and not address.startswith("/"):
        return "", address  # a plain name: a queue
    if address.startswith("/exchanges/"):
        parts = address[len("/exchanges/") :].split("/")
        ex = _segment(parts[0])
        if ex == "amq.default":
            raise BadAddress("the default exchange is addressed as /queues/NAME")
        if len(parts) == 1:
            return ex, None
        if len(parts) == 2:
            return ex, unquote(parts[1])
        raise BadAddress("too many segments")
    if address.startswith("/queues/"):
        rest = address[len("/queues/") :]
        if "/" in rest:
            raise BadAddress("a queue name has one segment")
        return "", _segment(rest)
    for prefix in ("/amq/queue/", "/queue/"):
        if address.startswith(prefix):
            return "", _segment(address[len(prefix) :])
    if address.startswith("/exchange/"):
        parts = address[len("/exchange/") :].split("/", 1)
        return _segment(parts[0]), (parts[1] if len(parts) == 2 else None)
    if address.startswith("/topic/"):
        return "amq.topic", address[len("/topic/") :]
    raise BadAddress("not a RabbitMQ address (/exchanges/NAME[/KEY], /queues/NAME or NAME)")


def exchange_source(address: str) -> tuple[str, str] | None:
    """(exchange, binding key) of a v1 source that subscribes to an exchange, else None."""
    if address.startswith("/exchange/"):
        parts = address[len("/exchange/") :].split("/", 1)
        return _segment(parts[0]), (unquote(parts[1]) if len(parts) == 2 else "")
    if address.startswith("/topic/"):
        return "amq.topic", unquote(address[len("/topic/") :])
    return None


def parse_source(address: str) -> str:
    if address and not address.startswith("/"):
        return address  # a plain name: a queue
    if address.startswith("/queues/"):
        rest = address[len("/queues/") :]
        if "/" in rest:
            raise BadAddress("a queue name has one segment")
        return _segment(rest)
    for prefix in ("/amq/queue/", "/queue/"):
        if address.startswith(prefix):
            return _segment(address[len(prefix) :])
    raise BadAddress("not a queue address (/queues/NAME, NAME, /exchange/NAME/KEY or /topic/KEY)")
