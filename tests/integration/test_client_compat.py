"""Client libraries that depend on RabbitMQ's behaviour where it departs from the letter of the
0-9-1 spec (issue: behave as RabbitMQ does where real clients depend on it)."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import struct
import subprocess
import time
from pathlib import Path

import pytest

from merpati.node.amqp091 import render, spec
from tests.support.names import uid
from tests.support.net import ipv6_loopback

amqpstorm = pytest.importorskip("amqpstorm", reason="amqpstorm is not installed")
aiormq = pytest.importorskip("aiormq", reason="aiormq is not installed")


def test_amqpstorm_publishes_bodies_in_frames_of_frame_max_octets(node) -> None:
    """amqpstorm splits a body into payloads of frame_max octets; RabbitMQ accepts them."""
    q = uid("storm")
    body = bytes(range(256)) * 1200  # 307200 octets: three frames of 131072 and the rest
    with amqpstorm.Connection("127.0.0.1", "guest", "guest", port=node.port) as conn:
        ch = conn.channel()
        ch.queue.declare(q)
        ch.confirm_deliveries()
        assert ch.basic.publish(body, q) is True
        msg = ch.basic.get(q, no_ack=True, to_dict=False)
        assert msg is not None and msg.body == body
        ch.queue.delete(q)


def test_aiormq_opens_channel_65535(node) -> None:
    """channel_max bounds how many channels are open, not their numbers (aiormq uses 65535)."""

    async def main() -> None:
        conn = await aiormq.connect(f"amqp://guest:guest@127.0.0.1:{node.port}/")
        try:
            ch = await conn.channel(channel_number=65535)
            ok = await ch.queue_declare(uid("aiormq"), auto_delete=True)
            assert ok.message_count == 0
            await ch.close()
        finally:
            await conn.close()

    asyncio.run(main())


def test_aiormq_passive_declare_of_the_default_exchange_is_refused(node) -> None:
    async def main() -> None:
        conn = await aiormq.connect(f"amqp://guest:guest@127.0.0.1:{node.port}/")
        try:
            ch = await conn.channel()
            with pytest.raises(aiormq.exceptions.ChannelAccessRefused) as info:
                await ch.exchange_declare("", passive=True)
            assert "default exchange" in str(info.value)
        finally:
            await conn.close()

    asyncio.run(main())


def test_py_amqp_deletes_a_queue_it_consumes_from(node) -> None:
    """kombu's py-amqp waits for queue.delete-ok; a basic.cancel before it raised
    ConsumerCancelled there."""
    amqp = pytest.importorskip("amqp", reason="py-amqp (kombu's transport) is not installed")
    q = uid("pyamqp")
    conn = amqp.Connection(f"127.0.0.1:{node.port}", userid="guest", password="guest")
    conn.connect()
    try:
        ch = conn.channel()
        ch.queue_declare(q)
        cancelled = []
        ch.basic_consume(q, callback=lambda m: None, on_cancel=cancelled.append)
        assert ch.queue_delete(q) == 0  # returns: no ConsumerCancelled while it waited
        conn.drain_events(timeout=2)
        assert cancelled, "the consumer's basic.cancel never came"
    finally:
        conn.close()


JS = Path(__file__).resolve().parents[1] / "amqp10" / "js"


@pytest.mark.skipif(shutil.which("node") is None, reason="node (Node.js) is not installed")
@pytest.mark.skipif(
    not (JS / "node_modules" / "@cloudamqp" / "amqp-client").is_dir(),
    reason="@cloudamqp/amqp-client is not installed: npm ci --prefix tests/amqp10/js",
)
@pytest.mark.parametrize("heartbeat", [1, 2])
def test_cloudamqp_client_with_a_short_heartbeat_stays_connected(node, heartbeat) -> None:
    """It gives up after one interval without a byte from the server (a socket timeout), and
    only answers the server's heartbeats: the node must send one every half interval."""
    out = subprocess.run(
        ["node", str(JS / "heartbeat.mjs"), str(node.port), str(heartbeat), str(4 * heartbeat)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"heartbeat": heartbeat, "open": True, "errors": []}


def test_a_silent_client_is_dropped_between_two_and_three_intervals(node) -> None:
    """As RabbitMQ: checked once per interval, dropped after two silent checks in a row."""
    s = socket.create_connection(("127.0.0.1", node.port))
    try:
        s.sendall(b"AMQP\x00\x00\x09\x01")
        reader = _Frames(s)
        reader.next()  # connection.start
        s.sendall(
            render.method_frame(
                0,
                spec.ConnectionStartOk(
                    client_properties={},
                    mechanism="PLAIN",
                    response=b"\x00guest\x00guest",
                    locale="en_US",
                ),
            )
        )
        reader.next()  # connection.tune
        s.sendall(render.method_frame(0, spec.ConnectionTuneOk(0, 131072, 1)))
        s.sendall(render.method_frame(0, spec.ConnectionOpen(virtual_host="/")))
        reader.next()  # connection.open-ok
        t0 = time.monotonic()
        beats = 0
        s.settimeout(5)
        while True:  # read the server's heartbeats, answer none
            try:
                ftype = reader.next()
            except (ConnectionError, EOFError):
                break
            beats += ftype == 8
        silent_for = time.monotonic() - t0
        assert 2.0 <= silent_for <= 3.3, silent_for
        assert beats >= 4  # one every half interval at least
    finally:
        s.close()


class _Frames:
    """Frame types read off a socket, one at a time."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def _read(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise EOFError("closed by the node")
            data += chunk
        return data

    def next(self) -> int:
        ftype, _channel, size = struct.unpack(">BHI", self._read(7))
        self._read(size + 1)
        return ftype


@pytest.mark.skipif(not ipv6_loopback(), reason="this machine has no IPv6 loopback (::1)")
def test_by_default_the_node_listens_on_ipv4_and_ipv6(make_node) -> None:
    """Node.js resolves localhost to ::1 first (amqplib's connect to localhost failed)."""
    import pika

    n = make_node("--bind", "0.0.0.0,::")  # the default, over the tests' 127.0.0.1
    for host in ("127.0.0.1", "::1"):
        params = pika.ConnectionParameters(
            host, n.port, credentials=pika.PlainCredentials("guest", "guest")
        )
        conn = pika.BlockingConnection(params)  # guest from loopback of either family
        conn.channel().queue_declare(uid("v6"), auto_delete=True)
        conn.close()


@pytest.mark.skipif(shutil.which("node") is None, reason="node (Node.js) is not installed")
@pytest.mark.skipif(
    not (JS / "node_modules" / "@cloudamqp" / "amqp-client").is_dir(),
    reason="@cloudamqp/amqp-client is not installed: npm ci --prefix tests/amqp10/js",
)
@pytest.mark.skipif(not ipv6_loopback(), reason="this machine has no IPv6 loopback (::1)")
def test_a_nodejs_client_connects_to_localhost(make_node) -> None:
    n = make_node("--bind", "0.0.0.0,::")
    script = (
        'import { AMQPClient } from "@cloudamqp/amqp-client";'
        f'const c = await new AMQPClient("amqp://guest:guest@localhost:{n.port}").connect();'
        "console.log(c.socket.remoteAddress); await c.close();"
    )
    out = subprocess.run(
        ["node", "--input-type=module", "-e", script],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=JS,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() in ("::1", "127.0.0.1")
