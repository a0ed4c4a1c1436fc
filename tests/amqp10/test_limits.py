"""Vhost limits met by an AMQP 1.0 client (python-qpid-proton), with RabbitMQ 4's answers: a
connection beyond max-connections gets open then close with amqp:resource-limit-exceeded, a
queue declared on attach beyond max-queues is refused with the same condition."""

from __future__ import annotations

import uuid

import pytest

proton = pytest.importorskip("proton", reason="python-qpid-proton is not installed")

from proton import ConnectionException, Message  # noqa: E402
from proton.utils import LinkDetached  # noqa: E402

from merpati.node.amqp10 import performatives as P  # noqa: E402
from merpati.node.amqp10.codec import Symbol  # noqa: E402
from tests.support.http import call, q  # noqa: E402

from ._support import RawClient, blocking, frame  # noqa: E402


@pytest.fixture
def vhost(node):
    """A vhost of the test's own on the shared node (deleted after), so its limits touch
    nothing else."""
    name = f"lim10-{uuid.uuid4().hex[:8]}"
    assert call(node.management_url, "PUT", f"/api/vhosts/{q(name)}", {})[0] == 201
    yield name
    call(node.management_url, "DELETE", f"/api/vhosts/{q(name)}")


def test_connection_beyond_the_vhost_limit_is_resource_limit_exceeded(node, vhost):
    base = node.management_url
    path = f"/api/vhost-limits/{q(vhost)}/max-connections"
    assert call(base, "PUT", path, {"value": 1})[0] == 204
    first = blocking(node, virtual_host=f"vhost:{vhost}")
    with pytest.raises(ConnectionException) as info:
        blocking(node, virtual_host=f"vhost:{vhost}")
    assert "amqp:resource-limit-exceeded" in str(info.value), info.value
    assert (
        f"access to vhost '{vhost}' refused for user 'guest': vhost connection limit (1) is reached"
    ) in str(info.value)

    # The same refusal frame by frame: open, then close with the condition.
    raw = RawClient(node)
    raw.sock.sendall(b"AMQP\x03\x01\x00\x00")
    assert raw.read_exact(8) == b"AMQP\x03\x01\x00\x00"
    raw.read_frame()  # sasl-mechanisms
    login = P.SaslInit(mechanism=Symbol("PLAIN"), initial_response=b"\0guest\0guest")
    raw.sock.sendall(frame(0, login, ftype=1))
    assert raw.read_frame().code == 0
    raw.sock.sendall(b"AMQP\x00\x01\x00\x00")
    assert raw.read_exact(8) == b"AMQP\x00\x01\x00\x00"
    raw.sock.sendall(frame(0, P.Open(container_id="raw", hostname=f"vhost:{vhost}")))
    assert isinstance(raw.read_frame(), P.Open)
    close = raw.until(P.Close)
    assert close.error.condition == "amqp:resource-limit-exceeded"
    raw.close()

    # The connection that got in carries on; clearing the limit lets the next one in.
    first.create_sender(f"/queues/{_queue(node, vhost)}").send(Message(body="fine"))
    assert call(base, "DELETE", path)[0] == 204
    second = blocking(node, virtual_host=f"vhost:{vhost}")
    second.close()
    first.close()


def test_queue_declared_on_attach_beyond_max_queues_is_refused(node, vhost):
    base = node.management_url
    assert call(base, "PUT", f"/api/vhost-limits/{q(vhost)}/max-queues", {"value": 0})[0] == 204
    c = blocking(node, virtual_host=f"vhost:{vhost}")
    try:
        # RabbitMQ 3.x's /queue/NAME declares the queue on attach.
        with pytest.raises(LinkDetached) as info:
            c.create_sender("/queue/over-the-limit")
        assert "amqp:resource-limit-exceeded" in str(info.value), info.value
        assert (
            f"cannot declare queue 'over-the-limit': queue limit in vhost '{vhost}' (0) is reached"
        ) in str(info.value)
        # The connection is still usable once the limit allows the queue.
        assert call(base, "DELETE", f"/api/vhost-limits/{q(vhost)}/max-queues")[0] == 204
        c.create_sender("/queue/over-the-limit").send(Message(body="now"))
    finally:
        c.close()


def _queue(node, vhost: str) -> str:
    name = f"q-{uuid.uuid4().hex[:8]}"
    assert call(node.management_url, "PUT", f"/api/queues/{q(vhost)}/{name}", {})[0] == 201
    return name
