"""What both ends of forwarding share: call options, the cluster-secret token, error mapping."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging

import grpc

from merpati.node.metadata.state import MetadataError

# Messages may be as large as the node accepts (max_message_size); gRPC's default cap is 4 MiB.
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", -1),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    # Peers start in any order: reconnect within a fraction of a second, not gRPC's default
    # backoff (1 s doubling to 2 minutes), or a node that came up second stays "down" for long.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]
SERVER_OPTIONS = [
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", -1),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.http2.max_ping_strikes", 0),
]

NODE_KEY = "merpati-node"
AUTH_KEY = "merpati-auth"


class ChannelSecurity:
    """How nodes reach each other over gRPC: plain (the cluster secret's token authenticates
    every call) or mutual TLS, where each end shows a certificate of the cluster CA and checks
    the other's; a node without one cannot connect, join or send. One setting per process
    (`use_tls`, from ClusterNode.from_config), as every channel and the server follow it.

    `use_tls` again (a certificate reload) bumps `generation`: the server hands the new
    certificate to every handshake after that (gRPC asks `_fetch` at each one), and a Peer
    whose channel is of an older generation opens a new one for its next calls."""

    def __init__(self) -> None:
        self.cert: bytes | None = None
        self.key: bytes | None = None
        self.ca: bytes | None = None
        self.generation = 0
        self._served = 0  # the generation the server's handshakes last took

    @property
    def tls(self) -> bool:
        return self.cert is not None

    def use_tls(self, cert: bytes, key: bytes, ca: bytes) -> None:
        self.cert, self.key, self.ca = cert, key, ca
        self.generation += 1

    def channel(self, address: str) -> grpc.aio.Channel:
        if self.cert is None:
            return grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        creds = grpc.ssl_channel_credentials(
            root_certificates=self.ca, private_key=self.key, certificate_chain=self.cert
        )
        return grpc.aio.secure_channel(address, creds, options=CHANNEL_OPTIONS)

    def listen(self, server: grpc.aio.Server, address: str) -> int:
        if self.cert is None:
            return server.add_insecure_port(address)
        self._served = self.generation
        creds = grpc.dynamic_ssl_server_credentials(
            self._server_config(), self._fetch, require_client_authentication=True
        )
        return server.add_secure_port(address, creds)

    def _server_config(self) -> grpc.ServerCertificateConfiguration:
        assert self.key is not None and self.cert is not None
        return grpc.ssl_server_certificate_configuration(
            [(self.key, self.cert)], root_certificates=self.ca
        )

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        # Called by gRPC (on its own thread) before each handshake; None keeps the current one.
        if self._served == self.generation:
            return None
        self._served = self.generation
        return self._server_config()


SECURITY = ChannelSecurity()


def auth_token(secret: str | bytes | None) -> str:
    """The token a call carries: HMAC of a fixed label under the secret (not the secret itself)."""
    if not secret:
        return ""
    key = secret.encode("utf-8") if isinstance(secret, str) else secret
    return hmac.new(key, b"merpati-forwarding-v1", hashlib.sha256).hexdigest()


def down_text(vhost: str, name: str, node: str) -> str:
    return f"queue '{name}' in vhost '{vhost}' is on node '{node}', which is down"


# gRPC status -> AMQP reply code, for errors a queue on another node answers with.
_CODES = {
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.FAILED_PRECONDITION: 406,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 406,
}


def metadata_error(err: BaseException, vhost: str, name: str, node: str) -> MetadataError:
    """The MetadataError a channel closes with when a call to the queue's node failed."""
    if isinstance(err, MetadataError):
        return err
    if isinstance(err, grpc.aio.AioRpcError):
        code = err.code()
        if code in _CODES:
            return MetadataError(_CODES[code], err.details() or str(code))
        if code == grpc.StatusCode.UNAUTHENTICATED:
            return MetadataError(
                404,
                f"queue '{name}' in vhost '{vhost}' is on node '{node}', which refused this "
                "node's cluster secret",
            )
    return MetadataError(404, down_text(vhost, name, node))


def quiet(task: asyncio.Future) -> None:
    """Done-callback of a call nobody awaits: its failure is only worth a debug line."""
    if not task.cancelled() and task.exception() is not None:
        logging.getLogger("merpati.forwarding").debug(
            "forwarding call failed: %s", task.exception()
        )
