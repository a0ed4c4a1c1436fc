"""node.tls: the AMQPS server context, its checks, reloads that fail safely, the client's CN."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from merpati.node import tls
from tests.support.certs import CA


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    ca = CA.create("unit CA")
    ca.write(tmp_path / "ca.pem")
    ca.issue("server", tmp_path, "server", server=True)
    return tmp_path


def test_the_context_asks_for_client_certificates_as_configured(certs: Path) -> None:
    args = (str(certs / "server.pem"), str(certs / "server.key"), str(certs / "ca.pem"))
    assert tls.server_context(*args, "peer", True).verify_mode == ssl.CERT_REQUIRED
    assert tls.server_context(*args, "peer", False).verify_mode == ssl.CERT_OPTIONAL
    ctx = tls.server_context(*args, "none", False)
    assert ctx.verify_mode == ssl.CERT_NONE
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2


def test_a_key_that_does_not_match_is_refused_with_the_files_named(certs: Path) -> None:
    CA.create("other").issue("x", certs, "other")
    with pytest.raises(tls.TLSConfigError, match="server.pem or key .*other.key unusable"):
        tls.server_context(str(certs / "server.pem"), str(certs / "other.key"), "", "none", False)


def test_a_reload_of_a_broken_file_keeps_the_certificate_in_use(certs: Path) -> None:
    cert, key = str(certs / "server.pem"), str(certs / "server.key")
    ctx = tls.server_context(cert, key, "", "none", False)
    watcher = tls.CertificateWatcher((cert, key), tls.amqps_loader(ctx, cert, key, ""))
    (certs / "server.pem").write_text("not a certificate")
    assert watcher.reload("test") is False
    CA.create("again").issue("server", certs, "server", server=True)
    assert watcher.reload("test") is True


def test_the_client_identity_is_the_subject_common_name() -> None:
    class Transport:
        def __init__(self, cert: object) -> None:
            self.cert = cert

        def get_extra_info(self, name: str) -> object:
            return self.cert if name == "peercert" else None

    subject = ((("organizationName", "Acme"),), (("commonName", "app-cert"),))
    assert tls.peer_common_name(Transport({"subject": subject})) == "app-cert"
    assert tls.peer_common_name(Transport({})) is None
    assert tls.peer_common_name(Transport(None)) is None
