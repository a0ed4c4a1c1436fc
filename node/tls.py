"""TLS for the AMQP listener (AMQPS): the server context, its reload, the client's identity.

One `ssl.SSLContext` serves every AMQPS connection. Reloading loads the new certificate and key
into that same context (OpenSSL hands them to every handshake after that), so connections already
open keep theirs and nothing is dropped: on SIGHUP, or when `CertificateWatcher` sees a file
change. The client's identity for SASL EXTERNAL is the subject CN of the certificate it
presented and the context verified, as RabbitMQ's rabbitmq_auth_mechanism_ssl takes it by
default (`ssl_cert_login_from = common_name`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from collections.abc import Callable
from typing import Any

log = logging.getLogger("merpati.tls")

WATCH_EVERY = 2.0  # seconds between looks at the certificate files' modification times


class TLSConfigError(ValueError):
    pass


def server_context(
    cert: str, key: str, ca: str, verify: str, fail_if_no_peer_cert: bool
) -> ssl.SSLContext:
    """The AMQPS server context: TLS 1.2 at least; with verify "peer", client certificates are
    asked for and checked against `ca` (required with `fail_if_no_peer_cert`)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    load_files(ctx, cert, key, ca)
    if verify == "peer":
        if not ca:
            raise TLSConfigError(
                "tls-verify peer needs tls-ca (the CA client certificates are checked against)"
            )
        ctx.verify_mode = ssl.CERT_REQUIRED if fail_if_no_peer_cert else ssl.CERT_OPTIONAL
    elif verify == "none":
        if fail_if_no_peer_cert:
            raise TLSConfigError("tls-fail-if-no-peer-cert needs tls-verify peer")
        ctx.verify_mode = ssl.CERT_NONE
    else:
        raise TLSConfigError(f"tls-verify must be peer or none, not {verify!r}")
    return ctx


def load_files(ctx: ssl.SSLContext, cert: str, key: str, ca: str) -> None:
    for what, path in (("certificate", cert), ("key", key), ("CA file", ca)):
        if path and not os.access(path, os.R_OK):
            raise TLSConfigError(f"cannot read TLS {what} {path}: no such file or not readable")
    try:
        ctx.load_cert_chain(cert, key or None)
    except ssl.SSLError as e:
        raise TLSConfigError(f"TLS certificate {cert} or key {key} unusable: {e.reason or e}")
    except OSError as e:
        raise TLSConfigError(f"cannot read TLS certificate {cert} or key {key}: {e.strerror}")
    if ca:
        try:
            ctx.load_verify_locations(cafile=ca)
        except ssl.SSLError as e:
            raise TLSConfigError(f"TLS CA file {ca} unusable: {e.reason or e}")
        except OSError as e:
            raise TLSConfigError(f"cannot read TLS CA file {ca}: {e.strerror}")


def peer_common_name(transport: Any) -> str | None:
    """The subject CN of the client certificate the handshake verified (None without one)."""
    cert = transport.get_extra_info("peercert") if transport is not None else None
    if not cert:
        return None
    for rdn in cert.get("subject", ()):
        for name, value in rdn:
            if name == "commonName":
                return str(value)
    return None


def amqps_loader(
    ctx: ssl.SSLContext, cert: str, key: str, ca: str, also: tuple[ssl.SSLContext, ...] = ()
) -> Callable[[], None]:
    """What reloading the AMQPS certificate does: the files into its context, and the
    certificate and key alone into `also` (the HTTPS contexts)."""

    def load() -> None:
        load_files(ctx, cert, key, ca)
        for other in also:
            load_files(other, cert, key, "")

    return load


def http_context(cert: str, key: str) -> ssl.SSLContext:
    """The HTTPS context of the management and metrics listeners: the AMQPS certificate, no
    client certificates asked (HTTP Basic authenticates)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    load_files(ctx, cert, key, "")
    return ctx


class CertificateWatcher:
    """Calls `load` (which raises TLSConfigError, leaving what is in use, when a file is missing
    or unusable) on `reload()` (SIGHUP) or when one of `files` changes; a reload that fails
    keeps the certificate in use and says why. `what` names the certificate in the log."""

    def __init__(
        self, files: tuple[str, ...], load: Callable[[], None], what: str = "TLS certificate"
    ) -> None:
        self.files = files
        self.load = load
        self.what = what
        self._stamps = self._read_stamps()
        self._task: asyncio.Task | None = None

    def _read_stamps(self) -> tuple[float, ...]:
        stamps = []
        for path in self.files:
            try:
                stamps.append(os.stat(path).st_mtime if path else 0.0)
            except OSError:
                stamps.append(-1.0)
        return tuple(stamps)

    def reload(self, why: str = "SIGHUP") -> bool:
        try:
            self.load()
        except TLSConfigError as e:
            log.error("%s not reloaded (%s): %s; the one in use stays", self.what, why, e)
            return False
        self._stamps = self._read_stamps()
        log.info("%s reloaded from %s (%s)", self.what, self.files[0], why)
        return True

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._watch())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(WATCH_EVERY)
            stamps = self._read_stamps()
            if stamps != self._stamps:
                self._stamps = stamps  # one attempt per change, even when it fails
                self.reload("files changed")
