"""Helpers for AMQP 1.0 tests: proton connections, 0-9-1 side channels, raw frames."""

from __future__ import annotations

import socket
import struct

import pika

from merpati.node.amqp10 import performatives as P
from merpati.node.amqp10.codec import Symbol, decode


def url(node, user: str = "guest", password: str = "guest") -> str:
    return f"amqp://{user}:{password}@127.0.0.1:{node.port}"


def blocking(node, **kw):
    from proton.utils import BlockingConnection

    kw.setdefault("allowed_mechs", "PLAIN")
    kw.setdefault("sasl_enabled", True)
    return BlockingConnection(url(node), timeout=10, **kw)


def channel091(node):
    conn = pika.BlockingConnection(pika.URLParameters(node.url))
    return conn, conn.channel()


def queue_count(node, name: str) -> int:
    conn, ch = channel091(node)
    try:
        return ch.queue_declare(name, passive=True).method.message_count
    finally:
        conn.close()


def frame(channel: int, perf, payload: bytes = b"", ftype: int = 0) -> bytes:
    body = perf.encode_amqp() + payload
    return struct.pack(">IBBH", 8 + len(body), 2, ftype, channel) + body


class RawClient:
    """A hand-driven AMQP 1.0 client for bad-input tests."""

    def __init__(self, node) -> None:
        self.sock = socket.create_connection(("127.0.0.1", node.port), timeout=5)
        self.buf = b""

    def login(self) -> None:
        self.sock.sendall(b"AMQP\x03\x01\x00\x00")
        assert self.read_exact(8) == b"AMQP\x03\x01\x00\x00"
        mechs = self.read_frame()
        assert isinstance(mechs, P.SaslMechanisms)
        self.sock.sendall(
            frame(
                0,
                P.SaslInit(mechanism=Symbol("PLAIN"), initial_response=b"\0guest\0guest"),
                ftype=1,
            )
        )
        outcome = self.read_frame()
        assert outcome.code == 0
        self.sock.sendall(b"AMQP\x00\x01\x00\x00")
        assert self.read_exact(8) == b"AMQP\x00\x01\x00\x00"
        self.sock.sendall(frame(0, P.Open(container_id="raw")))
        assert isinstance(self.read_frame(), P.Open)

    def begin(self, channel: int = 0) -> None:
        self.sock.sendall(
            frame(channel, P.Begin(next_outgoing_id=0, incoming_window=100, outgoing_window=100))
        )
        assert isinstance(self.read_frame(), P.Begin)

    def read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("closed")
            self.buf += data
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_frame(self):
        while True:
            size, doff, _ftype, _ch = struct.unpack(">IBBH", self.read_exact(8))
            rest = self.read_exact(size - 8)
            body = rest[doff * 4 - 8 :]
            if body:
                return P.decode_body(body)[0]

    def until(self, kind):
        while True:
            f = self.read_frame()
            if isinstance(f, kind):
                return f

    def closed(self) -> bool:
        try:
            while True:
                if not self.sock.recv(65536):
                    return True
        except (ConnectionResetError, TimeoutError, OSError):
            return True

    def close(self) -> None:
        self.sock.close()


__all__ = ["RawClient", "blocking", "channel091", "decode", "frame", "queue_count", "url"]
