"""Mutual TLS between nodes: a cluster whose gRPC traffic (forwarding, replication, membership)
runs over TLS with certificates of one cluster CA, and callers without such a certificate are
refused at the handshake."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import ssl
import time
from pathlib import Path

import grpc
import pika
import pytest
from cryptography import x509

from merpati.proto.merpati.v1 import forwarding_pb2 as pb
from merpati.proto.merpati.v1 import forwarding_pb2_grpc as pb_grpc
from tests.cluster.conftest import start_cluster
from tests.support.certs import CA
from tests.support.clients import connect
from tests.support.ctl import ctl_out
from tests.support.names import uid

QUORUM = {"x-queue-type": "quorum"}


@pytest.fixture(scope="module")
def cluster_ca() -> CA:
    return CA.create("cluster CA")


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory, cluster_ca: CA) -> Path:
    d = tmp_path_factory.mktemp("cluster-certs")
    ca = cluster_ca
    ca.write(d / "ca.pem")
    ca.issue("merpati-node", d, "node", server=True)
    stranger = CA.create("another CA")
    stranger.write(d / "other-ca.pem")
    stranger.issue("intruder", d, "intruder", server=True)
    return d


@pytest.fixture(scope="module")
def tls_cluster(certs: Path, request: pytest.FixtureRequest):
    c = start_cluster(
        extra=(
            "--cluster-tls-cert",
            str(certs / "node.pem"),
            "--cluster-tls-key",
            str(certs / "node.key"),
            "--cluster-tls-ca",
            str(certs / "ca.pem"),
        )
    )
    yield c
    c.stop()
    c.discard(keep=request.session.testsfailed > 0)


def test_forwarding_and_replication_work_over_mutual_tls(tls_cluster) -> None:
    name = uid("tls-qq")
    conn = connect(tls_cluster["n1"])
    ch = conn.channel()
    ch.queue_declare(name, durable=True, arguments=QUORUM)
    conn.close()
    pub = connect(tls_cluster["n2"])
    pch = pub.channel()
    pch.confirm_delivery()
    for i in range(20):
        pch.basic_publish("", name, b"m%d" % i, pika.BasicProperties(delivery_mode=2))
    pub.close()
    status = json.loads(ctl_out(tls_cluster["n3"], "--formatter", "json", "quorum_status", name))
    assert len(status) == 3 and all(r["online"] for r in status)
    sub = connect(tls_cluster["n3"])
    got = []
    sch = sub.channel()
    while True:
        method, _props, body = sch.basic_get(name, auto_ack=True)
        if method is None:
            break
        got.append(body)
    sub.close()
    assert sorted(got) == sorted(b"m%d" % i for i in range(20))


def _ping(address: str, creds: grpc.ChannelCredentials | None) -> None:
    async def run() -> None:
        ch = (
            grpc.aio.secure_channel(address, creds)
            if creds is not None
            else grpc.aio.insecure_channel(address)
        )
        async with ch:
            await pb_grpc.ForwardingStub(ch).Ping(pb.PingRequest(node_id="intruder"), timeout=3)

    asyncio.run(run())


@pytest.mark.parametrize("who", ["plaintext", "no client certificate", "another CA"])
def test_a_caller_without_a_cluster_certificate_is_refused(tls_cluster, certs: Path, who) -> None:
    address = f"127.0.0.1:{tls_cluster.ports['n1']}"
    ca = (certs / "ca.pem").read_bytes()
    creds = {
        "plaintext": None,
        "no client certificate": grpc.ssl_channel_credentials(root_certificates=ca),
        "another CA": grpc.ssl_channel_credentials(
            root_certificates=ca,
            private_key=(certs / "intruder.key").read_bytes(),
            certificate_chain=(certs / "intruder.pem").read_bytes(),
        ),
    }[who]
    with pytest.raises(grpc.aio.AioRpcError) as e:
        _ping(address, creds)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    # The cluster is not disturbed.
    conn = connect(tls_cluster["n2"])
    conn.channel().queue_declare(uid("after-intruder"), durable=True)
    conn.close()


def _served_serial(port: int, certs: Path, alpn: list[str] | None = None) -> int:
    """The serial number of the certificate a node's cluster listener shows a member."""
    ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    ctx.load_cert_chain(str(certs / "node.pem"), str(certs / "node.key"))
    if alpn:
        ctx.set_alpn_protocols(alpn)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=3) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s,
    ):
        der = s.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def test_raft_between_the_nodes_runs_inside_tls(tls_cluster, certs: Path) -> None:
    raft_port = tls_cluster.ports["n2"] + 1
    assert _served_serial(raft_port, certs) == _node_serial(certs)
    # A client without a certificate of the cluster CA is refused at the handshake.
    ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    ctx.load_cert_chain(str(certs / "intruder.pem"), str(certs / "intruder.key"))
    with (
        pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)),
        socket.create_connection(("127.0.0.1", raft_port), timeout=3) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s,
    ):
        s.sendall(b"x")
        s.recv(1)


def _node_serial(certs: Path) -> int:
    return x509.load_pem_x509_certificate((certs / "node.pem").read_bytes()).serial_number


def test_sighup_reloads_the_cluster_certificate_for_grpc_and_raft(
    tls_cluster, certs: Path, cluster_ca: CA
) -> None:
    """Last in the module: it replaces the certificate every node reads (same CA)."""
    n1 = tls_cluster["n1"]
    grpc_port, raft_port = tls_cluster.ports["n1"], tls_cluster.ports["n1"] + 1
    old = _node_serial(certs)
    assert _served_serial(grpc_port, certs, ["h2"]) == old
    cluster_ca.issue("merpati-node", certs, "node", server=True)
    new = _node_serial(certs)
    n1.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "cluster TLS certificate reloaded" not in n1.log():
        assert time.monotonic() < deadline, n1.log()[-2000:]
        time.sleep(0.1)
    assert n1.alive()
    assert _served_serial(grpc_port, certs, ["h2"]) == new
    assert _served_serial(raft_port, certs) == new
    # A member restarted now meets the others with the new certificate only, over both.
    n3 = tls_cluster["n3"]
    n3.stop()
    n3.start()
    name = uid("after-reload")
    conn = connect(n3)
    ch = conn.channel()
    ch.queue_declare(name, durable=True, arguments=QUORUM)
    ch.confirm_delivery()
    ch.basic_publish("", name, b"renewed", pika.BasicProperties(delivery_mode=2))
    conn.close()
    got = connect(n1)
    method, _props, body = got.channel().basic_get(name, auto_ack=True)
    got.close()
    assert method is not None and body == b"renewed"
