"""One way for tests to open an AMQP 0-9-1 client connection (pika BlockingConnection) to a node.

It retries a refused or failed connection for about three seconds: right after a node (re)starts,
or while a cluster node is still joining, its listener may not accept yet. A test that wants to see
a connection *fail* (bad credentials, a node that is down) must not use it: pika retries those too;
it builds its own `pika.ConnectionParameters` with `connection_attempts=1`.
"""

from __future__ import annotations

from typing import Any

import pika

ATTEMPTS = 10
RETRY_DELAY = 0.3


def connect(
    node: Any = None,
    *,
    host: str | None = None,
    port: int | None = None,
    user: str = "guest",
    password: str = "guest",
    vhost: str = "/",
    **params: Any,
) -> pika.BlockingConnection:
    """A connection to `node` (anything with a `.port`, and maybe a `.host`, e.g. NodeProcess) or
    to `host:port`; `params` are further `pika.ConnectionParameters` (heartbeat, frame_max, ...)."""
    if port is None:
        port = node.port
    if host is None:
        host = getattr(node, "host", None) or "127.0.0.1"
    params.setdefault("connection_attempts", ATTEMPTS)
    params.setdefault("retry_delay", RETRY_DELAY)
    params.setdefault("socket_timeout", 5)
    return pika.BlockingConnection(
        pika.ConnectionParameters(
            host,
            port,
            virtual_host=vhost,
            credentials=pika.PlainCredentials(user, password),
            **params,
        )
    )
