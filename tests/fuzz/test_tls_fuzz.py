"""Fuzzing the AMQPS handshakes on a live node: mutated TLS ClientHellos, garbage instead of TLS,
and, inside good TLS, mutated AMQP 0-9-1 start-ok and AMQP 1.0 SASL frames. A canary client,
connected over TLS before the storm, must keep working through it; the node must stay up and log
no traceback.
"""

from __future__ import annotations

import random
import socket
import ssl
from pathlib import Path

import pika
import pytest

from merpati.node.amqp091 import spec
from merpati.node.amqp091.render import method_frame
from merpati.node.amqp10 import performatives as P
from merpati.node.amqp10.codec import Symbol
from merpati.node.amqp10.connection import HEADER_SASL, sasl_frame
from tests.support.certs import CA, amqps_flags
from tests.support.node import NodeProcess, free_port

HEADER_091 = b"AMQP\x00\x00\x09\x01"
SEED = 20261205


def client_hello(ctx: ssl.SSLContext) -> bytes:
    """The first flight of a real TLS client, as bytes."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        choice = rng.random()
        if choice < 0.6 and b:
            b[rng.randrange(len(b))] = rng.randrange(256)
        elif choice < 0.8 and b:
            del b[rng.randrange(len(b)) :]
        else:
            b[rng.randrange(len(b) + 1) : 0] = rng.randbytes(rng.randint(1, 64))
    return bytes(b)


def drain(s: socket.socket, seconds: float = 0.05) -> None:
    s.settimeout(seconds)
    try:
        while s.recv(65536):
            pass
    except (TimeoutError, OSError, ssl.SSLError):
        pass  # quiet for `seconds`, or closed by the node: either way, done


@pytest.fixture
def tls_node(tmp_path: Path):
    ca = CA.create("fuzz CA")
    ca.write(tmp_path / "ca.pem")
    ca.issue("fuzz-server", tmp_path, "server", server=True)
    port = free_port()
    node = NodeProcess(*amqps_flags(port, tmp_path)).start()
    yield node, port, ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    node.stop()
    node.discard()


def test_a_storm_of_broken_tls_and_sasl_handshakes_leaves_the_node_and_a_canary_working(
    tls_node,
) -> None:
    node, port, ctx = tls_node
    rng = random.Random(SEED)
    canary = pika.BlockingConnection(
        pika.ConnectionParameters(
            "127.0.0.1", port, ssl_options=pika.SSLOptions(ctx, server_hostname="localhost")
        )
    )
    ch = canary.channel()
    ch.queue_declare("canary", auto_delete=True)
    ch.confirm_delivery()
    hello = client_hello(ctx)
    start_ok = method_frame(
        0,
        spec.BY_NAME["connection.start-ok"](
            client_properties={}, mechanism="PLAIN", response=b"\x00guest\x00guest", locale="en_US"
        ),
    )
    sasl_init = sasl_frame(
        P.SaslInit(mechanism=Symbol("PLAIN"), initial_response=b"\x00guest\x00guest").encode_amqp()
    )
    kinds: dict[str, int] = {}
    for i in range(300):
        kind = rng.choice(["hello", "garbage", "091", "10"])
        kinds[kind] = kinds.get(kind, 0) + 1
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            try:
                if kind == "hello":
                    raw.sendall(mutate(rng, hello))
                    drain(raw)
                elif kind == "garbage":
                    raw.sendall(rng.randbytes(rng.randint(1, 600)))
                    drain(raw)
                else:
                    with ctx.wrap_socket(raw, server_hostname="localhost") as s:
                        if kind == "091":
                            s.sendall(HEADER_091 + mutate(rng, start_ok))
                        else:
                            s.sendall(HEADER_SASL + mutate(rng, sasl_init))
                        drain(s)
            except (OSError, ssl.SSLError):
                pass  # the node closing on us is one of the right answers
        if i % 50 == 0:  # the canary carries on through the storm
            ch.basic_publish("", "canary", b"%d" % i)
    assert set(kinds) == {"hello", "garbage", "091", "10"}
    got = 0
    while ch.basic_get("canary", auto_ack=True)[0] is not None:
        got += 1
    assert got == 6
    canary.close()
    assert node.alive()
    assert "Traceback" not in node.log()
