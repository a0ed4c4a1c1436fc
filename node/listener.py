"""The AMQP listener: one socket, one asyncio Protocol, two protocol front ends.

Both protocols share a port, so the first bytes a client sends (the 8-byte protocol header) pick
the front end: `AMQP 3 1 0 0` (SASL) and `AMQP 0 1 0 0` → `node.amqp10.Connection10`; `AMQP 0 0 9 1`
or anything else → `node.amqp091.Connection091`, which answers a header it does not speak with its
own and closes, as the 0-9-1 spec asks. The front ends are sans-I/O (bytes in, bytes out) and the
listener is the one asyncio shell around either: `FrontEnd` is what it calls on them, `Shell` what
they call back. It lives outside both protocol packages so neither has to import the other, and so
that the server and the core need not import the 0-9-1 front end.

The per-read path is deliberately the same as before the split: one attribute load and a None test
pick the front end, then its `data_received` is called directly (no dispatch table, no wrapper).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable
from typing import Any, Protocol

from .amqp091.connection import Connection091, Settings
from .amqp10.connection import Connection10, Settings10
from .broker import Broker

log = logging.getLogger("merpati.listener")

# Output a client has not read, beyond one message of the largest size allowed: past that the
# client is not reading its socket (deliveries already stop while writing is paused, but replies,
# returns and basic.get answers do not), and it is disconnected before it costs the node memory.
OUTPUT_SLACK = 16 * 1024 * 1024


class FrontEnd(Protocol):
    """A protocol front end as the listener drives it (Connection091 and Connection10)."""

    # "running" once the handshake is done (the listener then stops its handshake timer).
    state: str
    peer: Any

    @property
    def tick_interval(self) -> float:
        """Seconds between heartbeat ticks (0: none); read once the front end is running."""
        ...

    def data_received(self, data: bytes) -> None: ...

    def connection_lost(self) -> None: ...

    def take_output(self) -> bytes:
        """Everything to write now (b"" when nothing), gathered since the last call."""
        ...

    def after_write(self) -> None: ...

    def writing_paused(self, paused: bool) -> None:
        """The socket's write buffer passed its high (True) or fell below its low (False) mark."""
        ...

    def heartbeat_tick(self) -> bool:
        """Every tick_interval seconds; False: the peer is silent too long, close the socket."""
        ...


class Timer(Protocol):
    def cancel(self) -> None: ...


class Shell(Protocol):
    """What a front end calls on the listener."""

    def schedule_flush(self) -> None: ...

    def close(self, after: float = 0.0) -> None: ...

    def set_reading(self, on: bool) -> None: ...

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        """Run `callback` in `delay` seconds unless the timer is cancelled or the socket closed
        first, then write what it produced (the 0-9-1 acknowledgement timeout check)."""
        ...


def settings_from_config(config: Any) -> tuple[Settings, Settings10]:
    """Each front end's negotiation limits from the node's configuration."""
    settings = Settings(
        frame_max=config.frame_max,
        channel_max=config.channel_max,
        heartbeat=config.heartbeat,
        max_message_size=config.max_message_size,
        handshake_timeout=config.handshake_timeout,
    )
    return settings, Settings10.from_config(config)


def is_loopback(peer: Any) -> bool:
    try:
        return ipaddress.ip_address(peer[0]).is_loopback
    except (ValueError, TypeError, IndexError):
        return peer is None or isinstance(peer, str)  # unix sockets count as local


class AMQPProtocol(asyncio.Protocol):
    """One client socket. Writes are gathered per event-loop turn and written once."""

    def __init__(
        self,
        broker: Broker,
        settings: Settings,
        settings10: Settings10 | None = None,
        tls: Any = None,
    ) -> None:
        self.broker = broker
        self.settings = settings
        self.settings10 = settings10
        self.tls = tls  # the AMQPS listener's ssl.SSLContext (None: plain)
        self.output_limit = settings.max_message_size + OUTPUT_SLACK
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.conn: FrontEnd | None = None  # once the header has arrived
        self._sniffed = b""
        self._heartbeat: asyncio.TimerHandle | None = None
        self._close_timer: asyncio.TimerHandle | None = None
        self._closed = False

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        # A client that never completes the handshake must not hold a socket forever.
        self._close_timer = self.loop.call_later(
            self.settings.handshake_timeout, self._handshake_timeout
        )

    def data_received(self, data: bytes) -> None:
        conn = self.conn
        if conn is None:
            conn = self._sniff(data)
            if conn is None:
                return
            data, self._sniffed = self._sniffed, b""
        conn.data_received(data)
        self.flush()
        if self._heartbeat is None and conn.state == "running" and conn.tick_interval:
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
            if self.transport.get_write_buffer_size() > self.output_limit:
                self._unread()

    def close(self, after: float = 0.0) -> None:
        if self._closed:
            return
        if after:
            if self._close_timer is not None:
                self._close_timer.cancel()
            self._close_timer = self.loop.call_later(after, self._close_now)
            return
        self.loop.call_soon(self._close_now)

    def _unread(self) -> None:
        assert self.transport is not None and self.conn is not None
        log.warning(
            "connection from %s closed: %d bytes written to it were not read (it does not "
            "read its socket; the bound is %d)",
            self.conn.peer,
            self.transport.get_write_buffer_size(),
            self.output_limit,
        )
        self._closed = True
        self.transport.abort()  # what is buffered cannot be delivered anyway
        self.conn.connection_lost()

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

    def _sniff(self, data: bytes) -> FrontEnd | None:
        """Pick the protocol from the header's first bytes (None: wait for more of them)."""
        buf = self._sniffed = self._sniffed + data
        assert self.transport is not None
        peer = self.transport.get_extra_info("peername")
        if len(buf) < 6 and b"AMQP".startswith(buf[:4]) and (len(buf) < 5 or buf[4] in (0, 3)):
            return None
        if buf[:4] == b"AMQP" and (buf[4] == 3 or (buf[4] == 0 and buf[5] == 1)):
            conn: Any = Connection10(self.broker, self, peer, is_loopback(peer), self.settings10)
        else:
            conn = Connection091(self.broker, self, peer, is_loopback(peer), self.settings)
        if self.tls is not None:
            from .tls import peer_common_name

            # The verified client certificate names the user of SASL EXTERNAL.
            conn.tls_user = peer_common_name(self.transport)
        self.conn = conn
        return conn

    def set_reading(self, on: bool) -> None:
        if self.transport is None or self._closed:
            return
        if on:
            self.transport.resume_reading()
        else:
            self.transport.pause_reading()

    def call_later(self, delay: float, callback: Callable[[], None]) -> asyncio.TimerHandle:
        return self.loop.call_later(delay, self._timer_fired, callback)

    def _timer_fired(self, callback: Callable[[], None]) -> None:
        if self._closed:
            return
        callback()
        self.flush()

    # -- heartbeats ---------------------------------------------------------------------------

    def _start_heartbeat(self) -> None:
        assert self.conn is not None
        self._heartbeat = self.loop.call_later(self.conn.tick_interval, self._tick)

    def _tick(self) -> None:
        conn = self.conn
        if conn is None or self._closed:
            return
        if not conn.heartbeat_tick():
            self._close_now()
            return
        self.flush()
        self._heartbeat = self.loop.call_later(conn.tick_interval, self._tick)
