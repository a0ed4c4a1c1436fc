"""AMQPS: real clients over TLS, client certificates checked, SASL EXTERNAL, certificate reload.

One node listens on its plain port and on an AMQPS port with --tls-verify peer and
--tls-fail-if-no-peer-cert: every TLS client must show a certificate of the test CA.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pika
import pika.credentials
import pytest

from tests.support.certs import CA, amqps_flags
from tests.support.ctl import ctl, ctl_out
from tests.support.node import NodeProcess, free_port

RHEA = Path(__file__).resolve().parents[1] / "amqp10" / "js"


class TLSNode:
    def __init__(self, node: NodeProcess, tls_port: int, certs: Path) -> None:
        self.node = node
        self.tls_port = tls_port
        self.certs = certs
        self.ca = certs / "ca.pem"

    def client_context(self, stem: str | None = "client") -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca))
        if stem is not None:
            ctx.load_cert_chain(str(self.certs / f"{stem}.pem"), str(self.certs / f"{stem}.key"))
        return ctx

    def params(
        self, stem: str | None = "client", credentials: object | None = None
    ) -> pika.ConnectionParameters:
        return pika.ConnectionParameters(
            "127.0.0.1",
            self.tls_port,
            credentials=credentials or pika.PlainCredentials("guest", "guest"),
            ssl_options=pika.SSLOptions(self.client_context(stem), server_hostname="localhost"),
            connection_attempts=1,
            socket_timeout=5,
        )

    def server_cn(self) -> str:
        """The subject CN of the certificate the AMQPS port presents now."""
        ctx = self.client_context()
        with (
            socket.create_connection(("127.0.0.1", self.tls_port), timeout=5) as raw,
            ctx.wrap_socket(raw, server_hostname="localhost") as s,
        ):
            cert = s.getpeercert()
        return dict(rdn[0] for rdn in cert["subject"])["commonName"]


@pytest.fixture(scope="module")
def tls_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLSNode]:
    certs = tmp_path_factory.mktemp("certs")
    ca = CA.create("merpati test CA")
    ca.write(certs / "ca.pem")
    ca.issue("merpati-server", certs, "server", server=True)
    ca.issue("app-cert", certs, "client")  # a user of that name exists (EXTERNAL)
    ca.issue("nobody-cert", certs, "stranger")  # no such user
    ca.issue("app-cert", certs, "expired", expired=True)
    CA.create("another CA").issue("app-cert", certs, "foreign")
    port = free_port()
    node = NodeProcess(
        *amqps_flags(port, certs),
        "--tls-ca",
        str(certs / "ca.pem"),
        "--tls-verify",
        "peer",
        "--tls-fail-if-no-peer-cert",
        "true",
    )
    node.start()
    ctl_out(node, "add_user", "app-cert", "unused-password")
    ctl_out(node, "set_permissions", "app-cert", ".*", ".*", ".*")
    yield TLSNode(node, port, certs)
    node.stop()
    node.discard()


def roundtrip(conn: pika.BlockingConnection, name: str, body: bytes) -> bytes:
    ch = conn.channel()
    ch.queue_declare(name, auto_delete=True)
    ch.confirm_delivery()
    ch.basic_publish("", name, body)
    method, _props, got = ch.basic_get(name, auto_ack=True)
    assert method is not None
    return got


def test_pika_publishes_and_gets_over_tls(tls_node: TLSNode) -> None:
    conn = pika.BlockingConnection(tls_node.params())
    assert roundtrip(conn, "tls-pika", b"over TLS") == b"over TLS"
    conn.close()
    assert "(TLS)" in tls_node.node.log()


def test_sasl_external_logs_in_as_the_certificates_common_name(tls_node: TLSNode) -> None:
    conn = pika.BlockingConnection(
        tls_node.params(credentials=pika.credentials.ExternalCredentials())
    )
    assert roundtrip(conn, "tls-external", b"as app-cert") == b"as app-cert"
    listed = ctl_out(tls_node.node, "list_connections")
    conn.close()
    assert "app-cert" in listed, listed


def test_sasl_external_for_a_certificate_naming_no_user_is_refused(tls_node: TLSNode) -> None:
    with pytest.raises(pika.exceptions.ProbableAuthenticationError, match="no user 'nobody-cert'"):
        pika.BlockingConnection(
            tls_node.params("stranger", credentials=pika.credentials.ExternalCredentials())
        )


@pytest.mark.parametrize(
    "stem, why",
    [(None, "no client certificate"), ("foreign", "another CA"), ("expired", "expired")],
)
def test_a_client_certificate_the_node_cannot_trust_is_refused(
    tls_node: TLSNode, stem: str | None, why: str
) -> None:
    canary = pika.BlockingConnection(tls_node.params())
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        pika.BlockingConnection(tls_node.params(stem))
    # The refusal costs nobody else anything: the canary's connection still works.
    assert roundtrip(canary, f"canary-{stem}", why.encode()) == why.encode()
    canary.close()
    assert "Traceback" not in tls_node.node.log()


def test_the_plain_port_still_serves(tls_node: TLSNode) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(tls_node.node.url))
    assert roundtrip(conn, "plain-beside-tls", b"plain") == b"plain"
    conn.close()


def test_aio_pika_over_tls(tls_node: TLSNode) -> None:
    import aio_pika

    async def run() -> bytes:
        conn = await aio_pika.connect(
            host="127.0.0.1",
            port=tls_node.tls_port,
            login="guest",
            password="guest",
            ssl=True,
            ssl_context=tls_node.client_context(),
        )
        async with conn:
            ch = await conn.channel()
            q = await ch.declare_queue("tls-aio", auto_delete=True)
            await ch.default_exchange.publish(aio_pika.Message(b"aio over TLS"), "tls-aio")
            msg = await q.get(timeout=5)
            await msg.ack()
            return msg.body

    assert asyncio.run(run()) == b"aio over TLS"


def test_kombu_over_tls(tls_node: TLSNode) -> None:
    import kombu

    certs = tls_node.certs
    ssl_opts = {
        "ca_certs": str(certs / "ca.pem"),
        "certfile": str(certs / "client.pem"),
        "keyfile": str(certs / "client.key"),
        "cert_reqs": ssl.CERT_REQUIRED,
        "server_hostname": "localhost",
    }
    url = f"amqp://guest:guest@127.0.0.1:{tls_node.tls_port}//"
    with kombu.Connection(url, ssl=ssl_opts) as conn:
        q = kombu.Queue("tls-kombu", auto_delete=True)
        with conn.Producer() as producer:
            producer.publish({"over": "TLS"}, routing_key="tls-kombu", declare=[q])
        got = conn.SimpleQueue(q).get(timeout=5)
        assert got.payload == {"over": "TLS"}
        got.ack()


def test_qpid_proton_over_amqps_with_sasl_external(tls_node: TLSNode) -> None:
    from proton import Message, SSLDomain
    from proton.utils import BlockingConnection

    setup = pika.BlockingConnection(tls_node.params())
    setup.channel().queue_declare("tls-proton")
    setup.close()
    domain = SSLDomain(SSLDomain.MODE_CLIENT)
    certs = tls_node.certs
    domain.set_trusted_ca_db(str(certs / "ca.pem"))
    domain.set_peer_authentication(SSLDomain.VERIFY_PEER)
    domain.set_credentials(str(certs / "client.pem"), str(certs / "client.key"), None)
    conn = BlockingConnection(
        f"amqps://127.0.0.1:{tls_node.tls_port}",
        ssl_domain=domain,
        allowed_mechs="EXTERNAL",
        timeout=10,
    )
    try:
        sender = conn.create_sender("/queues/tls-proton")
        receiver = conn.create_receiver("/queues/tls-proton")
        sender.send(Message(body="proton over TLS"))
        msg = receiver.receive(timeout=10)
        receiver.accept()
        assert msg.body == "proton over TLS"
    finally:
        conn.close()


def test_a_new_certificate_is_served_after_sighup_and_open_connections_stay(
    tls_node: TLSNode,
) -> None:
    before = pika.BlockingConnection(tls_node.params())
    assert tls_node.server_cn() == "merpati-server"
    new_ca = CA.create("merpati test CA 2")
    certs = tls_node.certs
    # Trust both CAs on the client side: the new server certificate comes from the second.
    both = (certs / "ca.pem").read_bytes() + new_ca.write(certs / "ca2.pem").read_bytes()
    (certs / "ca.pem").write_bytes(both)
    new_ca.issue("merpati-server-renewed", certs, "server", server=True)
    assert tls_node.node.proc is not None
    tls_node.node.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while tls_node.server_cn() != "merpati-server-renewed":
        assert time.monotonic() < deadline, tls_node.node.log()
        time.sleep(0.2)
    assert "TLS certificate reloaded" in tls_node.node.log()
    # The connection made with the old certificate is still open and working.
    assert roundtrip(before, "after-reload", b"still here") == b"still here"
    before.close()


def test_a_node_with_amqp_port_0_serves_amqps_only_and_https(tls_node: TLSNode) -> None:
    certs = tls_node.certs
    port = free_port()
    node = NodeProcess(
        "--http-tls",
        "true",
        "--amqp-port",
        "0",
        *amqps_flags(port, certs),
    )
    try:
        node.start()
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", node.port), timeout=2).close()
        only = TLSNode(node, port, certs)
        conn = pika.BlockingConnection(only.params(None))  # verify none: no client certificate
        assert roundtrip(conn, "amqps-only", b"tls only") == b"tls only"
        conn.close()
        # The management API and metrics answer HTTPS only; ctl talks to it with the CA.
        https = {"MERPATI_CTL_SCHEME": "https", "MERPATI_CTL_CACERT": str(certs / "ca.pem")}
        listed = ctl_out(node, "list_queues", env=https)
        assert "amqps-only" in listed
        assert ctl(node, "list_queues", check=False).returncode != 0  # plain http refused
        ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
        url = f"https://localhost:{node.metrics_port}/metrics"
        with urllib.request.urlopen(url, context=ctx, timeout=10) as resp:
            assert b"rabbitmq_" in resp.read()
    finally:
        node.stop()
        node.discard()


def test_a_certificate_file_that_is_missing_stops_the_start_with_its_name(
    tmp_path: Path,
) -> None:
    node = NodeProcess("--tls-cert", str(tmp_path / "absent.pem"))
    try:
        with pytest.raises(RuntimeError, match="absent.pem"):
            node.start()
    finally:
        node.discard()


def test_silent_clients_are_closed_after_the_handshake_timeout(tls_node: TLSNode) -> None:
    tls_port = free_port()
    node = NodeProcess(
        "--handshake-timeout",
        "0.5",
        *amqps_flags(tls_port, tls_node.certs),
    )
    try:
        node.start()
        for port in (node.port, tls_port):  # plain AMQP, then TLS never started
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                start = time.monotonic()
                assert s.recv(1) == b""  # closed by the node, nothing sent
                assert time.monotonic() - start < 4
        # A client that does complete it is not affected.
        conn = pika.BlockingConnection(pika.URLParameters(node.url))
        time.sleep(1.0)
        assert roundtrip(conn, "after-handshake-timeout", b"ok") == b"ok"
        conn.close()
    finally:
        node.stop()
        node.discard()


@pytest.mark.skipif(
    shutil.which("node") is None or not (RHEA / "node_modules" / "rhea").is_dir(),
    reason="node or rhea is not installed (npm ci --prefix tests/amqp10/js)",
)
def test_rhea_over_amqps_with_sasl_external(tls_node: TLSNode) -> None:
    setup = pika.BlockingConnection(tls_node.params())
    setup.channel().queue_declare("tls-rhea")
    setup.close()
    out = subprocess.run(
        [
            "node",
            str(RHEA / "sendrecv.js"),
            str(tls_node.tls_port),
            "/queues/tls-rhea",
            "20",
            "unsettled",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "MERPATI_RHEA_TLS_DIR": str(tls_node.certs)},
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert out.returncode == 0 and result["errors"] == [], (result, out.stderr)
    assert result["received"] == [f"rhea-{i}" for i in range(20)]
