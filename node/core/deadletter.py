"""Dead-lettering: the message a queue hands to its dead-letter exchange, as RabbitMQ builds it.

The `x-death` header is a list of tables, newest first, one per (queue, reason): `count`, `reason`,
`queue`, `time`, `exchange`, `routing-keys` and, for a message that had its own TTL,
`original-expiration` (the `expiration` property itself is removed so the message does not expire
again in the next queue). `x-first-death-queue/-reason/-exchange` are set once. A dead-lettered
message that would reach a queue already in its `x-death` without any rejection on the way is in a
cycle and is dropped for that queue.
"""

from __future__ import annotations

import time
from typing import Any

from ..wire.properties import encode_properties
from ..wire.table import Timestamp, as_int, encode_shortstr
from .message import Message


def _text(value: Any) -> Any:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def dead_lettered(msg: Message, queue: str, reason: str, dlx: str, dlrk: str | None) -> Message:
    props = dict(msg.properties)
    headers = dict(props.get("headers") or {})
    deaths = [dict(d) for d in headers.get("x-death") or [] if isinstance(d, dict)]
    routing_keys = [msg.routing_key]
    entry = None
    for i, d in enumerate(deaths):
        if _text(d.get("queue")) == queue and _text(d.get("reason")) == reason:
            entry = deaths.pop(i)
            break
    if entry is None:
        entry = {
            "count": 0,
            "reason": reason,
            "queue": queue,
            "time": Timestamp(int(time.time())),
            "exchange": msg.exchange,
            "routing-keys": routing_keys,
        }
        expiration = props.get("expiration")
        if expiration is not None:
            entry["original-expiration"] = expiration
    entry["count"] = (as_int(entry.get("count")) or 0) + 1
    entry["time"] = Timestamp(int(time.time()))
    deaths.insert(0, entry)
    headers["x-death"] = deaths
    headers.setdefault("x-first-death-queue", queue)
    headers.setdefault("x-first-death-reason", reason)
    headers.setdefault("x-first-death-exchange", msg.exchange)
    props["headers"] = headers
    props.pop("expiration", None)
    routing_key = dlrk if dlrk is not None else msg.routing_key
    out = Message(
        dlx,
        routing_key,
        encode_shortstr(dlx) + encode_shortstr(routing_key),
        encode_properties(props),
        msg.body,
    )
    out.publisher = msg.publisher
    out.deaths = deaths  # spares is_cycle decoding the headers just encoded
    out.protocol = msg.protocol  # still the same message (its 1.0 view is rebuilt if needed)
    return out


def is_cycle(msg: Message, target_queue: str) -> bool:
    """RabbitMQ's rule: a cycle unless some death on the way back was a rejection."""
    deaths = msg.deaths if msg.deaths is not None else msg.headers().get("x-death") or []
    for d in deaths:
        if not isinstance(d, dict):
            continue
        if _text(d.get("reason")) == "rejected":
            return False
        if _text(d.get("queue")) == target_queue:
            return True
    return False
