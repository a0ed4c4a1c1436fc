"""The asyncio shell around `Connection091`: socket events in, buffered writes out, timers.

One listener serves both protocols: the first bytes (the 8-byte protocol header) pick the
connection: `AMQP 0 0 9 1` (or anything unknown) → `Connection091`, `AMQP 3 1 0 0` (SASL) and
`AMQP 0 1 0 0` → `node.amqp10.Connection10`, which speaks to this shell through the same methods.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from typing import Any

from ..broker import Broker
from .connection import Connection091, Settings

log = logging.getLogger("merpati.amqp091")


def is_loopback(peer: Any) -> bool:
    try:
        return ipaddress.ip_address(peer[0]).is_loopback
    except (ValueError, TypeError, IndexError):
        return peer is None or isinstance(peer, str)  # unix sockets count as local


class AMQPProtocol(asyncio.Protocol):
    """One client socket. Writes are gathered per event-loop turn and written once."""

    def __init__(self, broker: Broker, settings: Settings) -> None:
        self.broker = broker
        self.settings = settings
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.conn: Any = None  # Connection091 or Connection10, once the header has arrived
        self._sniffed = b""
        self._heartbeat: asyncio.TimerHandle | None = None
        self._close_timer: asyncio.TimerHandle | None = None
        self._closed = False

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        # A client that never completes the handshake must not hold a socket forever.
        self._close_timer = self.loop.call_later(10.0, self._handshake_timeout)

    def data_received(self, data: bytes) -> None:
        conn = self.conn
        if conn is None:
            conn = self._sniff(data)
            if conn is None:
                return
            data, self._sniffed = self._sniffed, b""
        conn.data_received(data)
        self.flush()
        if conn.heartbeat and self._heartbeat is None and conn.state == "running":
            self._start_heartbeat()
        if self._close_timer is not None and conn.state == "running":
            self._close_timer.cancel()
            self._close_timer = None

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        if self._close_timer is not None:
            self._close_timer.cancel()
        if self.conn is not None:
            self.conn.connection_lost()

    def pause_writing(self) -> None:
        if self.conn is not None:
            self.conn.writing_paused(True)

    def resume_writing(self) -> None:
        if self.conn is not None:
            self.conn.writing_paused(False)
            self.flush()

    # -- Shell --------------------------------------------------------------------------------

    def schedule_flush(self) -> None:
        self.loop.call_soon(self.flush)

    def flush(self) -> None:
        conn = self.conn
        if conn is None:
            return
        data = conn.take_output()
        if data and not self._closed and self.transport is not None:
            self.transport.write(data)
            conn.after_write()

    def close(self, after: float = 0.0) -> None:
        if self._closed:
            return
        if after:
            if self._close_timer is not None:
                self._close_timer.cancel()
            self._close_timer = self.loop.call_later(after, self._close_now)
            return
        self.loop.call_soon(self._close_now)

    def _close_now(self) -> None:
        if self._closed or self.transport is None:
            return
        self.flush()
        self._closed = True
        self.transport.close()
        if self.conn is not None:
            self.conn.connection_lost()

    def _handshake_timeout(self) -> None:
        self._close_timer = None
        if self.conn is None or self.conn.state != "running":
            peer = self.conn.peer if self.conn is not None else None
            log.info("connection from %s: handshake timeout", peer)
            self._close_now()

    def _sniff(self, data: bytes) -> Any:
        """Pick the protocol from the header's first bytes (None: wait for more of them)."""
        buf = self._sniffed = self._sniffed + data
        assert self.transport is not None
        peer = self.transport.get_extra_info("peername")
        if len(buf) < 6 and b"AMQP".startswith(buf[:4]) and (len(buf) < 5 or buf[4] in (0, 3)):
            return None
        if buf[:4] == b"AMQP" and (buf[4] == 3 or (buf[4] == 0 and buf[5] == 1)):
            from ..amqp10.connection import Connection10, Settings10

            settings10 = getattr(self.settings, "amqp10", None) or Settings10()
            self.conn = Connection10(self.broker, self, peer, is_loopback(peer), settings10)
        else:
            self.conn = Connection091(self.broker, self, peer, is_loopback(peer), self.settings)
        return self.conn

    def set_reading(self, on: bool) -> None:
        if self.transport is None or self._closed:
            return
        if on:
            self.transport.resume_reading()
        else:
            self.transport.pause_reading()

    # -- heartbeats ---------------------------------------------------------------------------

    def _start_heartbeat(self) -> None:
        assert self.conn is not None
        self._heartbeat = self.loop.call_later(self.conn.heartbeat / 2, self._tick)

    def _tick(self) -> None:
        conn = self.conn
        if conn is None or self._closed:
            return
        if not conn.heartbeat_tick():
            self._close_now()
            return
        self.flush()
        self._heartbeat = self.loop.call_later(conn.heartbeat / 2, self._tick)
