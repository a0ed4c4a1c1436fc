"""The asyncio shell around `Connection091`: socket events in, buffered writes out, timers."""

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
        self.conn: Connection091 | None = None
        self._heartbeat: asyncio.TimerHandle | None = None
        self._close_timer: asyncio.TimerHandle | None = None
        self._closed = False

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.conn = Connection091(self.broker, self, peer, is_loopback(peer), self.settings)
        # A client that never completes the handshake must not hold a socket forever.
        self._close_timer = self.loop.call_later(10.0, self._handshake_timeout)

    def data_received(self, data: bytes) -> None:
        conn = self.conn
        assert conn is not None
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
        if self.conn is not None and self.conn.state != "running":
            log.info("connection from %s: handshake timeout", self.conn.peer)
            self._close_now()

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
