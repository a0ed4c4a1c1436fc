"""Raft inside mutual TLS: a pysyncobj transport whose connections speak TLS.

Theory of operation
-------------------
pysyncobj exchanges pickles over plain TCP; its only protection is the Fernet encryption a
`password` turns on. With `--cluster-tls-*` the metadata Raft runs inside TLS with the same
certificates as gRPC: each side shows a certificate of the cluster CA and checks the other's
(the connecting side also checks that the certificate names the host it dialled, as gRPC does),
so a process without such a certificate cannot join, vote or send a single pickle.

pysyncobj drives its sockets from one poller in the raft thread, non-blocking. An `ssl.SSLSocket`
in non-blocking mode fits that badly (its "want read/write" errors are not EAGAIN, and bytes it
has decrypted sit where the poller cannot see them), so `TlsConnection` runs TLS sans-I/O: an
`ssl.SSLObject` between two memory BIOs. Raw bytes from the socket go into the incoming BIO, and
whatever TLS wants to send (handshake records and encrypted data alike) comes out of the outgoing
BIO into a raw buffer that is written when the socket is writable. The connection asks the poller
for write events only while that buffer holds something.

`TlsConnection` and `TlsServer` present the interface of pysyncobj's `TcpConnection` and
`TcpServer` that `TCPTransport` uses, with the same message framing (length, zlib, pickle, and the
random-key exchange when a password is also set), so `transport_class(tls)` only swaps the
objects it creates: the server it listens with and the connection of each node it dials. A
connection dialled out reports itself connected only once the handshake is done, so the
transport's first message (this node's address) already travels encrypted.

Certificates reload with `RaftTls.reload` (loaded into the same contexts: new handshakes use the
new files, open connections keep theirs), as the AMQPS listener's do.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import socket
import ssl
import struct
import time
import zlib
from collections.abc import Callable
from typing import Any

import pysyncobj.pickle as pysyncobj_pickle
from pysyncobj.dns_resolver import globalDnsResolver
from pysyncobj.monotonic import monotonic
from pysyncobj.poller import POLL_EVENT_TYPE
from pysyncobj.tcp_connection import CONNECTION_STATE, _getAddrType, set_keepalive
from pysyncobj.transport import TCPTransport

from merpati.node.tls import load_files

log = logging.getLogger("merpati.raft.tls")

_CHUNK = 1 << 16
_WOULD_BLOCK = (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINPROGRESS)
# A peer whose handshake keeps failing (wrong CA, no certificate) retries every half second:
# say why once a minute per peer, not at every attempt.
_LOG_EVERY = 60.0


class RaftTls:
    """The two contexts of Raft's TLS: the listening side requires a client certificate of the
    cluster CA; the dialling side shows this node's certificate and verifies the peer's and its
    host name. Both use TLS 1.2 at least."""

    def __init__(self, cert: str, key: str, ca: str) -> None:
        self.files = (cert, key, ca)
        self.server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.server.verify_mode = ssl.CERT_REQUIRED
        self.client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies and checks host names
        for ctx in (self.server, self.client):
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        self.reload()

    def reload(self) -> None:
        """Load the files again into both contexts; raises node.tls.TLSConfigError (the contexts
        keep what they had) when one is missing or unusable."""
        cert, key, ca = self.files
        for ctx in (self.server, self.client):
            load_files(ctx, cert, key, ca)


_last_logged: dict[tuple[str, str], float] = {}


def _log_refused(peer: str, why: str) -> None:
    now = time.monotonic()
    key = (peer, why)
    if now - _last_logged.get(key, -_LOG_EVERY) >= _LOG_EVERY:
        _last_logged[key] = now
        log.warning("Raft TLS connection with %s refused: %s", peer, why)


class TlsConnection:
    """One Raft connection inside TLS, with the interface of pysyncobj's TcpConnection."""

    def __init__(
        self,
        poller: Any,
        context: ssl.SSLContext,
        *,
        server_hostname: str | None = None,
        sock: socket.socket | None = None,
        timeout: float = 10.0,
        sendBufferSize: int = 2**13,  # noqa: N803 - pysyncobj's keyword names
        recvBufferSize: int = 2**13,  # noqa: N803
        keepalive: tuple[int, int, int] | None = None,
    ) -> None:
        # Read and written by TCPTransport, as on pysyncobj's connections.
        self.sendRandKey: bytes | None = None
        self.recvRandKey: bytes | None = None
        self.recvLastTimestamp = 0
        self.encryptor: Any = None

        self._poller = poller
        self._ctx = context
        self._hostname = server_hostname
        self._timeout = timeout
        self._sndbuf = sendBufferSize
        self._rcvbuf = recvBufferSize
        self._keepalive = keepalive
        self._on_message: Callable[[Any], None] | None = None
        self._on_connected: Callable[[], None] | None = None
        self._on_disconnected: Callable[[], None] | None = None
        self._sock: socket.socket | None = None
        self._fileno: int | None = None
        self._tls: ssl.SSLObject | None = None
        self._in_bio = ssl.MemoryBIO()
        self._out_bio = ssl.MemoryBIO()
        self._handshaken = False
        self._tcp_up = False
        self._mask = 0
        self._plain_in = bytearray()
        self._plain_out = bytearray()
        self._raw_out = bytearray()
        self._last_read = monotonic()
        self._state = CONNECTION_STATE.DISCONNECTED
        self._peer = server_hostname or "?"
        if sock is not None:
            # Accepted: "connected" at once, as pysyncobj's are; the transport only answers
            # after the peer's first message, which cannot come before the handshake.
            with contextlib.suppress(OSError, KeyError, ValueError):
                host, port = sock.getpeername()[:2]
                self._peer = f"{host}:{port}"
            self._attach(sock, server_side=True)
            self._tcp_up = True
            self._state = CONNECTION_STATE.CONNECTED
            self._flush()

    # -- the TcpConnection interface ----------------------------------------------------------

    def setOnConnectedCallback(self, cb: Callable[[], None] | None) -> None:  # noqa: N802
        self._on_connected = cb

    def setOnMessageReceivedCallback(self, cb: Callable[[Any], None] | None) -> None:  # noqa: N802
        self._on_message = cb

    def setOnDisconnectedCallback(self, cb: Callable[[], None] | None) -> None:  # noqa: N802
        self._on_disconnected = cb

    @property
    def state(self) -> int:
        return self._state

    def fileno(self) -> int | None:
        return self._fileno

    def getSendBufferSize(self) -> int:  # noqa: N802
        return len(self._plain_out) + len(self._raw_out)

    def connect(self, host: str | None, port: int) -> bool:
        if host is None:
            return False
        self.disconnect()
        sock = socket.socket(_getAddrType(host), socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        try:
            sock.connect((host, port))
        except OSError as e:
            if e.errno not in _WOULD_BLOCK:
                sock.close()
                return False
        self._peer = f"{self._hostname or host}:{port}"
        self._attach(sock, server_side=False)
        self._state = CONNECTION_STATE.CONNECTING
        self._flush()
        return True

    def send(self, message: Any) -> None:
        if self.sendRandKey:
            message = (self.sendRandKey, message)
        data = zlib.compress(pysyncobj_pickle.dumps(message), 3)
        if self.encryptor:
            data = self.encryptor.encrypt_at_time(data, int(monotonic()))
        self._plain_out += struct.pack("i", len(data))
        self._plain_out += data
        if self._state != CONNECTION_STATE.DISCONNECTED:
            self._flush()

    def disconnect(self) -> None:
        notify = self._on_disconnected is not None and self._state != CONNECTION_STATE.DISCONNECTED
        self.sendRandKey = None
        self.recvRandKey = None
        self.recvLastTimestamp = 0
        if self._fileno is not None:
            with contextlib.suppress(OSError, KeyError, ValueError):
                self._poller.unsubscribe(self._fileno)
            self._fileno = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._tls = None
        self._plain_in.clear()
        self._plain_out.clear()
        self._raw_out.clear()
        self._state = CONNECTION_STATE.DISCONNECTED
        if notify:
            assert self._on_disconnected is not None
            self._on_disconnected()

    # -- the socket and the TLS object ----------------------------------------------------------

    def _attach(self, sock: socket.socket, server_side: bool) -> None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self._sndbuf)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self._rcvbuf)
        if self._keepalive is not None:
            set_keepalive(sock, *self._keepalive)
        self._sock = sock
        self._fileno = sock.fileno()
        self._in_bio = ssl.MemoryBIO()
        self._out_bio = ssl.MemoryBIO()
        self._tls = self._ctx.wrap_bio(
            self._in_bio,
            self._out_bio,
            server_side=server_side,
            server_hostname=None if server_side else self._hostname,
        )
        self._handshaken = False
        self._tcp_up = False
        self._mask = 0
        self._last_read = monotonic()
        self._handshake()  # the dialling side's ClientHello waits in the outgoing BIO

    def _on_event(self, fd: int, event: int) -> None:
        if fd != self._fileno:
            with contextlib.suppress(OSError, KeyError, ValueError):
                self._poller.unsubscribe(fd)
            return
        if event & POLL_EVENT_TYPE.ERROR or monotonic() - self._last_read > self._timeout:
            self.disconnect()
            return
        sock = self._sock
        assert sock is not None
        if not self._tcp_up:
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                self.disconnect()
                return
            self._tcp_up = True
            self._last_read = monotonic()
        if event & POLL_EVENT_TYPE.READ:
            if not self._read_raw():
                return
            if not self._handshaken and not self._handshake():
                return
            if self._handshaken and not self._read_plain():
                return
        self._flush()

    def _read_raw(self) -> bool:
        sock = self._sock
        assert sock is not None
        while True:
            try:
                data = sock.recv(_CHUNK)
            except OSError as e:
                if e.errno in _WOULD_BLOCK:
                    break
                self.disconnect()
                return False
            if not data:
                self.disconnect()
                return False
            self._in_bio.write(data)
            if len(data) < _CHUNK:
                break
        self._last_read = monotonic()
        return True

    def _handshake(self) -> bool:
        """Go on with the handshake; False when it failed (and the connection is closed)."""
        assert self._tls is not None
        try:
            self._tls.do_handshake()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return True
        except (ssl.SSLError, ssl.CertificateError, OSError) as e:
            _log_refused(self._peer, getattr(e, "reason", None) or str(e))
            self._send_what_tls_has()  # the alert, so the peer hears why
            self.disconnect()
            return False
        self._handshaken = True
        if self._state == CONNECTION_STATE.CONNECTING:
            self._state = CONNECTION_STATE.CONNECTED
            if self._on_connected is not None:
                self._on_connected()
            if self._state == CONNECTION_STATE.DISCONNECTED:
                return False
        return True

    def _read_plain(self) -> bool:
        tls = self._tls
        assert tls is not None
        while True:
            try:
                data = tls.read(_CHUNK)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                break
            except (ssl.SSLError, OSError):  # close_notify, a bad record: the peer is gone
                self.disconnect()
                return False
            if not data:
                self.disconnect()
                return False
            self._plain_in += data
        while self._state != CONNECTION_STATE.DISCONNECTED:
            message = self._next_message()
            if message is None:
                break
            if self._on_message is not None:
                self._on_message(message)
        return self._state != CONNECTION_STATE.DISCONNECTED

    def _next_message(self) -> Any:
        buf = self._plain_in
        if len(buf) < 4:
            return None
        (size,) = struct.unpack_from("i", buf)
        if len(buf) - 4 < size:
            return None
        data = bytes(buf[4 : 4 + size])
        del buf[: 4 + size]
        try:
            if self.encryptor:
                stamp = self.encryptor.extract_timestamp(data)
                if stamp < self.recvLastTimestamp:
                    raise ValueError("a replayed message")
                self.recvLastTimestamp = stamp
                data = self.encryptor.decrypt(data)
            message = pysyncobj_pickle.loads(zlib.decompress(data))
            if self.recvRandKey:
                key, message = message
                if key != self.recvRandKey:
                    raise ValueError("a message of another session")
        except Exception as e:  # noqa: BLE001 - whatever a peer sends must not stop the raft thread
            _log_refused(self._peer, f"unreadable message ({e or type(e).__name__})")
            self.disconnect()
            return None
        return message

    def _send_what_tls_has(self) -> None:
        out = self._out_bio.read()
        if out:
            self._raw_out += out
        sock = self._sock
        while self._raw_out and sock is not None:
            try:
                n = sock.send(self._raw_out)
            except OSError as e:
                if e.errno not in _WOULD_BLOCK:
                    self._raw_out.clear()  # the caller disconnects
                return
            del self._raw_out[:n]

    def _flush(self) -> None:
        """Encrypt what waits, write what the socket takes, ask for write events while some
        remains (or until a dialled connection is established)."""
        if self._tls is None:
            return
        if self._handshaken:
            while self._plain_out:
                try:
                    n = self._tls.write(bytes(self._plain_out[:_CHUNK]))
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    break
                except (ssl.SSLError, OSError):
                    self.disconnect()
                    return
                del self._plain_out[:n]
        sock = self._sock
        assert sock is not None
        out = self._out_bio.read()
        if out:
            self._raw_out += out
        while self._raw_out:
            try:
                n = sock.send(self._raw_out)
            except OSError as e:
                if e.errno in _WOULD_BLOCK:
                    break
                self.disconnect()
                return
            if n <= 0:
                break
            del self._raw_out[:n]
        mask = POLL_EVENT_TYPE.READ | POLL_EVENT_TYPE.ERROR
        if self._raw_out or not self._tcp_up:
            mask |= POLL_EVENT_TYPE.WRITE
        if mask != self._mask and self._fileno is not None:
            self._mask = mask
            self._poller.subscribe(self._fileno, self._on_event, mask)


class TlsServer:
    """Raft's listening socket; every accepted connection is a server-side TlsConnection."""

    def __init__(
        self,
        poller: Any,
        host: str,
        port: int,
        on_new_connection: Callable[[TlsConnection], None],
        context: ssl.SSLContext,
        conf: Any,
    ) -> None:
        self._poller = poller
        self._host = host
        self._port = int(port)
        self._on_new = on_new_connection
        self._ctx = context
        self._conf = conf
        self._sock: socket.socket | None = None
        self._fileno: int | None = None

    def bind(self) -> None:
        sock = socket.socket(_getAddrType(self._host), socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setblocking(False)
            sock.bind((self._host, self._port))
            sock.listen(16)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self._fileno = sock.fileno()
        self._poller.subscribe(
            self._fileno, self._on_accept, POLL_EVENT_TYPE.READ | POLL_EVENT_TYPE.ERROR
        )

    def unbind(self) -> None:
        if self._fileno is not None:
            with contextlib.suppress(OSError, KeyError, ValueError):
                self._poller.unsubscribe(self._fileno)
            self._fileno = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _on_accept(self, fd: int, event: int) -> None:
        if event & POLL_EVENT_TYPE.ERROR or self._sock is None:
            self.unbind()
            return
        while True:
            try:
                sock, _addr = self._sock.accept()
            except OSError as e:
                if e.errno not in _WOULD_BLOCK and e.errno != errno.ECONNABORTED:
                    log.error("Raft TLS listener failed: %s", e)
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conf = self._conf
            conn = TlsConnection(
                self._poller,
                self._ctx,
                sock=sock,
                timeout=conf.connectionTimeout,
                sendBufferSize=conf.sendBufferSize,
                recvBufferSize=conf.recvBufferSize,
                keepalive=conf.tcp_keepalive,
            )
            if conn.state == CONNECTION_STATE.CONNECTED:
                self._on_new(conn)


def transport_class(tls: RaftTls) -> type[TCPTransport]:
    """pysyncobj's TCPTransport with every connection inside TLS (SyncObj's `transportClass`)."""

    class TlsTransport(TCPTransport):
        def _createServer(self) -> None:  # noqa: N802 - pysyncobj's name
            conf = self._syncObj.conf
            host, port = conf.bindAddress.rsplit(":", 1)  # RaftLog always passes one
            if host not in ("0.0.0.0", "::"):
                host = globalDnsResolver().resolve(host)
            self._server = TlsServer(
                self._syncObj._poller,
                host,
                int(port),
                self._onNewIncomingConnection,
                tls.server,
                conf,
            )

        def addNode(self, node: Any) -> None:  # noqa: N802
            super().addNode(node)
            plain = self._connections.get(node)
            if plain is None or isinstance(plain, TlsConnection):
                return
            # Replace the (never connected) TcpConnection the stock transport just made.
            conf = self._syncObj.conf
            conn = TlsConnection(
                self._syncObj._poller,
                tls.client,
                server_hostname=node.host,
                timeout=conf.connectionTimeout,
                sendBufferSize=conf.sendBufferSize,
                recvBufferSize=conf.recvBufferSize,
                keepalive=conf.tcp_keepalive,
            )
            conn.encryptor = self._syncObj.encryptor
            conn.setOnConnectedCallback(functools.partial(self._onOutgoingConnected, conn))
            conn.setOnMessageReceivedCallback(functools.partial(self._onMessageReceived, node))
            conn.setOnDisconnectedCallback(functools.partial(self._onDisconnected, conn))
            self._connections[node] = conn

    return TlsTransport
