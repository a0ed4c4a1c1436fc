"""cluster.raft_tls: the metadata Raft inside mutual TLS, three RaftLogs in one process on loopback.

Each member shows a certificate of the cluster CA and checks its peers'; a member with another
CA's certificate, or a plain TCP client speaking pysyncobj's framing, is refused at the handshake.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import socket
import ssl
import struct
import time
import zlib
from pathlib import Path

import pytest
from cryptography import x509

from merpati.cluster.raft_log import RaftLog
from merpati.cluster.raft_tls import RaftTls
from merpati.node.metadata import commands as c
from merpati.node.tls import TLSConfigError
from tests.support.certs import CA
from tests.support.node import free_port


@pytest.fixture
def cluster_ca() -> CA:
    return CA.create("cluster CA")


@pytest.fixture
def certs(tmp_path: Path, cluster_ca: CA) -> Path:
    d = tmp_path / "certs"
    d.mkdir()
    cluster_ca.write(d / "ca.pem")
    cluster_ca.issue("merpati-node", d, "node", server=True)
    other = CA.create("another CA")
    other.write(d / "other-ca.pem")
    other.issue("intruder", d, "intruder", server=True)
    return d


def tls_of(d: Path, stem: str = "node", ca: str = "ca.pem") -> RaftTls:
    return RaftTls(str(d / f"{stem}.pem"), str(d / f"{stem}.key"), str(d / ca))


def logs_on(tmp_path: Path, ports: list[int], tls: list[RaftTls]) -> list[RaftLog]:
    addrs = [f"127.0.0.1:{p}" for p in ports]
    return [
        RaftLog(tmp_path / f"n{i}", addrs[i], partners=addrs, tls=tls[i], dynamic_membership=True)
        for i in range(len(ports))
    ]


async def wait_for(cond, timeout: float = 8.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


def test_three_members_replicate_inside_tls_and_refuse_a_plain_peer(
    tmp_path: Path, certs: Path
) -> None:
    ports = [free_port() for _ in range(3)]
    logs = logs_on(tmp_path, ports, [tls_of(certs) for _ in ports])

    async def main() -> None:
        await asyncio.gather(*(log.start(10) for log in logs))
        try:
            assert await logs[1].propose(c.AddVhost("inside-tls")) == "created"
            await wait_for(lambda: all("inside-tls" in log.state.vhosts for log in logs))
            # pysyncobj's own framing in plaintext (a node without TLS, or a stranger sending
            # a pickle): the listener takes it for a broken ClientHello and hangs up.
            frame = zlib.compress(pickle.dumps(f"127.0.0.1:{ports[0]}"), 3)
            with socket.create_connection(("127.0.0.1", ports[2]), timeout=3) as s:
                s.sendall(struct.pack("i", len(frame)) + frame)
                received = b""
                while chunk := s.recv(4096):
                    received += chunk
            assert not received.startswith(b"\x80"), "answered with a pickle"
            # And the cluster goes on, leader or not.
            assert await logs[2].propose(c.AddVhost("still-fine")) == "created"
            await wait_for(lambda: all("still-fine" in log.state.vhosts for log in logs))
        finally:
            for log in logs:
                log.stop()

    asyncio.run(asyncio.wait_for(main(), 30))


def test_a_member_with_another_cas_certificate_is_refused(
    tmp_path: Path, certs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two members, one with a certificate of another CA: they never connect, so neither has a
    majority and no leader is elected; the refusal is logged with its reason."""
    ports = [free_port() for _ in range(2)]
    good, intruder = tls_of(certs), tls_of(certs, "intruder", "other-ca.pem")
    logs = logs_on(tmp_path, ports, [good, intruder])
    caplog.set_level(logging.WARNING, logger="merpati.raft.tls")

    async def main() -> None:
        results = await asyncio.gather(*(log.start(3) for log in logs), return_exceptions=True)
        assert all(isinstance(r, BaseException) for r in results), results
        for log in logs:
            assert log.status().get("leader") is None

    asyncio.run(asyncio.wait_for(main(), 30))
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert any("CERTIFICATE_VERIFY_FAILED" in m or "certificate" in m for m in refusals), refusals


def served_serial(port: int, certs: Path) -> int:
    """The serial number of the certificate the Raft listener shows to a client of the CA."""
    ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    ctx.load_cert_chain(str(certs / "node.pem"), str(certs / "node.key"))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=3) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s,
    ):
        der = s.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def test_a_reload_serves_the_new_certificate_and_keeps_the_members_connected(
    tmp_path: Path, certs: Path, cluster_ca: CA
) -> None:
    ports = [free_port() for _ in range(2)]
    tls = [tls_of(certs) for _ in ports]
    logs = logs_on(tmp_path, ports, tls)

    async def main() -> None:
        await asyncio.gather(*(log.start(10) for log in logs))
        try:
            before = await asyncio.to_thread(served_serial, ports[0], certs)
            cluster_ca.issue("merpati-node", certs, "node", server=True)
            tls[0].reload()
            after = await asyncio.to_thread(served_serial, ports[0], certs)
            assert after != before
            assert await logs[0].propose(c.AddVhost("after-reload")) == "created"
            await wait_for(lambda: all("after-reload" in log.state.vhosts for log in logs))
        finally:
            for log in logs:
                log.stop()

    asyncio.run(asyncio.wait_for(main(), 30))


def test_a_reload_of_a_broken_file_keeps_the_contexts(certs: Path) -> None:
    tls = tls_of(certs)
    (certs / "node.pem").write_text("not a certificate")
    with pytest.raises(TLSConfigError, match="node.pem"):
        tls.reload()


def test_a_non_loopback_raft_port_with_cluster_tls_needs_no_secret(
    tmp_path: Path, certs: Path
) -> None:
    RaftLog(tmp_path, "10.1.2.3:4500", bind_address="0.0.0.0:4500", tls=tls_of(certs))
