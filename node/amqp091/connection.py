"""The AMQP 0-9-1 connection: handshake, channels, errors, heartbeats, flow — sans-I/O.

Theory of operation: the listener (node.listener) feeds received bytes to `data_received` and writes out what
`take_output` returns; `Connection091` never touches a socket. It asks the shell for the few things
only the shell can do through its `Shell` protocol (schedule a flush, close, pause reading, a
timer for the acknowledgement timeout check).

States, in order: header → start-ok → tune-ok → open → running; `closing` after the server sent
connection.close (only close-ok/close are read then), `closed` at the end. Channel states live in
`Channel` (`is_open`, `closing`). Everything that changes connection state lives in this file.

Errors: `FrameError` (malformed input) and `ConnectionError091` close the connection with their code;
`ChannelError` closes only its channel. Texts follow RabbitMQ's form "NOT_FOUND - no queue 'q' ...".
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..broker import AuthError, Broker
from ..core.alarms import blocked_reason
from ..core.limits import LimitExceeded
from ..core.output import OutputBuffer
from ..wire.table import DecodeError, decode_table
from . import render, spec
from .channel import Channel, ChannelError, ConnectionError091
from .channel_consume import check_period
from .constants import (
    ACCESS_REFUSED,
    CHANNEL_ERROR,
    COMMAND_INVALID,
    FRAME_ERROR,
    FRAME_MIN_SIZE,
    NOT_ALLOWED,
    PRECONDITION_FAILED,
    PROTOCOL_HEADER,
    REPLY_NAMES,
    UNEXPECTED_FRAME,
)
from .frames import FrameError, FrameReader

if TYPE_CHECKING:
    from ..core.queue import QueueHandle
    from ..listener import Shell, Timer

log = logging.getLogger("merpati.amqp091")

_ids = itertools.count(1)

# An acknowledgement timeout check this many seconds behind its time waits for the loop to read
# its sockets first (Connection091._ack_tick).
LATE_CHECK = 0.05

SERVER_CAPABILITIES = {
    "publisher_confirms": True,
    "exchange_exchange_bindings": True,
    "basic.nack": True,
    "consumer_cancel_notify": True,
    "connection.blocked": True,
    "consumer_priorities": True,
    "authentication_failure_close": True,
    "per_consumer_qos": True,
}


class Settings:
    """Negotiation limits the server proposes (RabbitMQ's defaults)."""

    def __init__(
        self,
        frame_max: int = 131072,
        channel_max: int = 2047,
        heartbeat: int = 60,
        max_message_size: int = 128 * 1024 * 1024,
        close_timeout: float = 3.0,
        handshake_timeout: float = 10.0,
    ) -> None:
        # The listener closes a socket that has not finished the handshake within this long
        # (either protocol; RabbitMQ's handshake_timeout).
        self.handshake_timeout = handshake_timeout
        self.frame_max = frame_max
        self.channel_max = channel_max
        self.heartbeat = heartbeat
        self.max_message_size = max_message_size
        self.close_timeout = close_timeout


def _text(code: int, text: str) -> str:
    return f"{REPLY_NAMES.get(code, str(code))} - {text}"[:255]


class Connection091(OutputBuffer):
    def __init__(
        self,
        broker: Broker,
        shell: Shell,
        peer: Any,
        loopback: bool,
        settings: Settings | None = None,
    ) -> None:
        self.broker = broker
        self.shell = shell
        self.peer = peer
        self.loopback = loopback
        self.settings = settings or Settings()
        # The subject CN of a verified TLS client certificate: SASL EXTERNAL is offered for it.
        self.tls_user: str | None = None
        self.id = f"{broker.node_id}/{broker.incarnation}/{next(_ids)}"
        self.state = "header"
        self.frame_max = self.settings.frame_max
        self.channel_max = self.settings.channel_max
        self.heartbeat = 0
        self.reader = FrameReader(self, self.settings.frame_max, self.settings.max_message_size)
        self.channels: dict[int, Channel] = {}
        self.init_output()
        self.confirm_dirty: set[Channel] = set()
        self.user = ""
        self.vhost = ""
        self.client_properties: dict[str, Any] = {}
        self.capabilities: dict[str, Any] = {}
        self.exclusive_queues: set[str] = set()
        # Resource alarms (node.core.alarms), as RabbitMQ's reader: while one stands the
        # connection is "blocking"; the first publish then blocks it: that message is held
        # (`held_publish`), reading stops, and connection.blocked goes out, once, until every
        # alarm has cleared.
        self.blocked = False  # an alarm stands
        self.held_publish: tuple[Any, ...] | None = None  # (channel number, on_publish args)
        self.blocked_sent = False
        self._header_buf = b""
        # Heartbeat bookkeeping (heartbeat_tick): activity since the last check, the ticks so
        # far, the receive checks in a row that found the peer silent, and whether the last
        # write of this tick's was only our heartbeat.
        self.recv_activity = False
        self.send_activity = False
        self.ticks = 0
        self.silent_checks = 0
        self.beat_sent = False
        self.opened_at = 0.0  # wall-clock time of connection.open (management API)
        # The acknowledgement timeout check (check_acks): one timer for all the channels, armed
        # while any has an ack-mode consumer or unacked deliveries, and when it is due.
        self._ack_timer: Timer | None = None
        self._ack_due = 0.0
        self._ack_deferred = False  # this check came late and waits for one more loop turn
        self.clock: Callable[[], float] = time.monotonic  # its clock (tests set their own)

    # -- output -------------------------------------------------------------------------------

    # OutputBuffer hooks: pending publisher confirms go out with each flush.

    def _pending_output(self) -> bool:
        return bool(self.confirm_dirty)

    def _flush_pending(self) -> None:
        if self.confirm_dirty:
            for ch in self.confirm_dirty:
                ch.flush_confirms()
            self.confirm_dirty.clear()

    def _kick_consumers(self) -> None:
        for ch in list(self.channels.values()):
            if ch.is_open:
                ch.kick_consumers()

    def _reading_held(self) -> bool:
        return self.held_publish is not None

    def send_method(self, channel: int, method: Any) -> None:
        self.send(render.method_frame(channel, method))

    # -- input --------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self.recv_activity = True
        if self.state == "closed":
            return
        if self.state == "header":
            data = self._read_header(data)
            if not data:
                return
        self.receiving = True
        try:
            self.reader.feed(data)
        except FrameError as e:
            self._fatal(e.code, e.text, e.class_id, e.method_id)
        except ConnectionError091 as e:
            self.close_connection(e.code, e.text, e.class_id, e.method_id)
        except DecodeError as e:
            self._fatal(FRAME_ERROR, f"cannot decode frame contents: {e}")
        except Exception:
            log.exception("internal error on connection %s", self.id)
            self.close_connection(541, "internal error while handling a frame")
        finally:
            self.receiving = False

    def _read_header(self, data: bytes) -> bytes:
        buf = self._header_buf + data
        if len(buf) < 8:
            if not b"AMQP".startswith(buf[:4]):
                self._bad_header()
                return b""
            self._header_buf = buf
            return b""
        if buf[:8] != PROTOCOL_HEADER:
            self._bad_header()
            return b""
        self._header_buf = b""
        self.state = "start-ok"
        self.send_method(
            0,
            spec.ConnectionStart(
                version_major=0,
                version_minor=9,
                server_properties={
                    "product": "Merpati",
                    "version": __version__,
                    "platform": "Python",
                    "copyright": "The Merpati authors",
                    "information": "Licensed under the Apache License 2.0",
                    "cluster_name": self.broker.node_id,
                    "capabilities": SERVER_CAPABILITIES,
                },
                mechanisms=b"PLAIN AMQPLAIN EXTERNAL" if self.tls_user else b"PLAIN AMQPLAIN",
                locales=b"en_US",
            ),
        )
        return buf[8:]

    def _bad_header(self) -> None:
        # The spec's answer to a protocol we do not speak: our header, then close.
        self.state = "closed"
        self.out.append(PROTOCOL_HEADER)
        self.shell.schedule_flush()
        self.shell.close()

    def on_heartbeat(self) -> None:
        pass

    def on_method(self, channel: int, payload: bytes) -> None:
        try:
            method = spec.decode_method(payload)
        except DecodeError as e:
            cid, mid = (
                (payload[0] << 8 | payload[1], payload[2] << 8 | payload[3])
                if len(payload) >= 4
                else (0, 0)
            )
            raise FrameError(
                FRAME_ERROR, f"cannot decode {spec.method_name(cid, mid)}: {e}", cid, mid
            )
        except spec.UnknownMethod as e:
            raise ConnectionError091(
                COMMAND_INVALID,
                f"unknown method {e.class_id}.{e.method_id}",
                e.class_id,
                e.method_id,
            )
        state = self.state
        if state == "running":
            if channel:
                self._channel_method(channel, method)
            else:
                self._connection_method(method)
        elif state == "closing":
            if channel == 0 and method.NAME in ("connection.close-ok", "connection.close"):
                if method.NAME == "connection.close":
                    self.send_method(0, spec.ConnectionCloseOk())
                self.state = "closed"
                self.reader.stopped = True
                self.shell.close()
        else:
            self._handshake(channel, method)

    # -- handshake ----------------------------------------------------------------------------

    def _handshake(self, channel: int, method: Any) -> None:
        expected = {
            "start-ok": "connection.start-ok",
            "tune-ok": "connection.tune-ok",
            "open": "connection.open",
        }[self.state]
        if channel != 0 or expected != method.NAME:
            if method.NAME == "connection.close" and channel == 0:
                self.send_method(0, spec.ConnectionCloseOk())
                self.state = "closed"
                self.shell.close()
                return
            raise ConnectionError091(
                COMMAND_INVALID if channel == 0 else CHANNEL_ERROR,
                f"expected '{expected}' on channel 0, got '{method.NAME}' on channel {channel}",
                method.CLASS_ID,
                method.METHOD_ID,
            )
        if self.state == "start-ok":
            self._start_ok(method)
        elif self.state == "tune-ok":
            self._tune_ok(method)
        else:
            self._open(method)

    def _start_ok(self, m: Any) -> None:
        self.client_properties = m.client_properties or {}
        caps = self.client_properties.get("capabilities")
        self.capabilities = caps if isinstance(caps, dict) else {}
        try:
            if m.mechanism == "EXTERNAL":
                self.user = self.broker.authenticate_external(self.tls_user, self.loopback)
            else:
                username, password = _credentials(m.mechanism, m.response)
                self.user = self.broker.authenticate(
                    username, password, self.loopback, _source(self.peer)
                )
        except ValueError as e:
            self._refuse(str(e))
            return
        except AuthError as e:
            log.warning("connection %s from %s refused: %s", self.id, self.peer, e)
            self._refuse(str(e))
            return
        self.state = "tune-ok"
        self.send_method(
            0,
            spec.ConnectionTune(
                channel_max=self.settings.channel_max,
                frame_max=self.settings.frame_max,
                heartbeat=self.settings.heartbeat,
            ),
        )

    def _refuse(self, text: str) -> None:
        if self.capabilities.get("authentication_failure_close"):
            if text.startswith("ACCESS_REFUSED - "):
                text = text[len("ACCESS_REFUSED - ") :]
            self.close_connection(ACCESS_REFUSED, text, 10, 11)
        else:
            # Without the capability the 0-9-1 spec's answer is to close the socket.
            self.state = "closed"
            self.reader.stopped = True
            self.shell.close()

    def _tune_ok(self, m: Any) -> None:
        server_max = self.settings.frame_max
        frame_max = m.frame_max or server_max
        if frame_max < FRAME_MIN_SIZE:
            raise ConnectionError091(
                NOT_ALLOWED, f"frame_max={frame_max} < {FRAME_MIN_SIZE} min size", 10, 31
            )
        if frame_max > server_max:
            raise ConnectionError091(
                NOT_ALLOWED, f"frame_max={frame_max} > {server_max} max size", 10, 31
            )
        channel_max = m.channel_max or 65535
        if channel_max > self.settings.channel_max:
            channel_max = self.settings.channel_max
        self.frame_max = frame_max
        self.reader.frame_max = frame_max
        self.channel_max = channel_max
        self.heartbeat = m.heartbeat
        self.state = "open"

    def _open(self, m: Any) -> None:
        vhost = m.virtual_host or "/"
        if vhost not in self.broker.state.vhosts:
            raise ConnectionError091(NOT_ALLOWED, f"vhost {vhost} not found", 10, 40)
        try:
            # Before the access check, as RabbitMQ's rabbit_reader does: node, vhost, user.
            self.broker.check_connection(self.user, vhost)
        except LimitExceeded as e:
            raise ConnectionError091(NOT_ALLOWED, e.text, 10, 40)
        if not self.broker.vhost_allowed(self.user, vhost):
            raise ConnectionError091(
                NOT_ALLOWED, f"access to vhost '{vhost}' refused for user '{self.user}'", 10, 40
            )
        self.vhost = vhost
        self.state = "running"
        self.broker.connections.add(self)
        self.broker.counters.connections_opened += 1
        self.opened_at = time.time()
        self.send_method(0, spec.ConnectionOpenOk())
        if self.broker.blocked:
            self.on_alarm(self.broker.blocked_by)  # blocking: its first publish blocks it

    # -- channel 0 while running --------------------------------------------------------------

    def _connection_method(self, m: Any) -> None:
        name = m.NAME
        if name == "connection.close":
            self.state = "closed"
            self.reader.stopped = True
            deleting = self._teardown()

            def close_ok(_: object = None) -> None:
                self.send_method(0, spec.ConnectionCloseOk())
                self.shell.close()

            if deleting:
                # close-ok once its exclusive queues are gone, so the client sees them gone.
                asyncio.gather(*deleting, return_exceptions=True).add_done_callback(close_ok)
            else:
                close_ok()
        elif name == "connection.update-secret":
            self.send_method(0, spec.ConnectionUpdateSecretOk())
        elif name == "connection.close-ok":
            self.state = "closed"
            self.shell.close()
        else:
            raise ConnectionError091(
                CHANNEL_ERROR,
                f"unexpected method {name} on channel 0 in connection state running",
                m.CLASS_ID,
                m.METHOD_ID,
            )

    # -- channels -----------------------------------------------------------------------------

    def _channel_method(self, number: int, m: Any) -> None:
        ch = self.channels.get(number)
        name = m.NAME
        if name == "channel.open":
            if ch is None and len(self.channels) >= self.channel_max:
                # channel_max bounds the channels open at once, not their numbers: RabbitMQ
                # lets a client open channel 65535 (aiormq does), and so does this node.
                raise ConnectionError091(
                    NOT_ALLOWED,
                    f"number of channels opened ({len(self.channels)}) has reached the "
                    f"negotiated channel_max ({self.channel_max})",
                    20,
                    10,
                )
            if ch is not None:
                raise ConnectionError091(
                    CHANNEL_ERROR, f"second 'channel.open' seen on channel {number}", 20, 10
                )
            try:
                self.broker.check_channel(self.user)
            except LimitExceeded as e:
                # RabbitMQ closes the connection, not the channel: 530 NOT_ALLOWED.
                raise ConnectionError091(NOT_ALLOWED, e.text, 20, 10)
            self.channels[number] = Channel(self, number)
            self.broker.counters.channels_opened += 1
            self.send_method(number, spec.ChannelOpenOk())
            return
        if ch is None:
            raise ConnectionError091(
                CHANNEL_ERROR,
                f"expected 'channel.open' on channel {number}, got '{name}'",
                m.CLASS_ID,
                m.METHOD_ID,
            )
        if ch.closing:
            # After the server's channel.close only close-ok (or a crossing close) counts.
            if name == "channel.close-ok":
                del self.channels[number]
            elif name == "channel.close":
                self.send_method(number, spec.ChannelCloseOk())
            return
        if name == "channel.close":
            ch.teardown()
            del self.channels[number]
            self.reader.drop_content(number)
            self.send_method(number, spec.ChannelCloseOk())
            return
        if name == "channel.close-ok":
            raise ConnectionError091(
                CHANNEL_ERROR, f"unexpected channel.close-ok on channel {number}", 20, 41
            )
        try:
            ch.handle_method(m)
        except ChannelError as e:
            self.close_channel(ch, e.code, e.text, e.class_id, e.method_id)

    def on_publish(
        self,
        number: int,
        exchange: str,
        routing_key: str,
        mandatory: bool,
        immediate: bool,
        route_raw: bytes,
        props_raw: bytes,
        body: bytes,
    ) -> None:
        ch = self.channels.get(number)
        if ch is None:
            if self.state != "running":
                raise ConnectionError091(
                    COMMAND_INVALID, "basic.publish before the connection is open", 60, 40
                )
            raise ConnectionError091(
                CHANNEL_ERROR,
                f"expected 'channel.open' on channel {number}, got 'basic.publish'",
                60,
                40,
            )
        if ch.closing:
            return
        if self.blocked:
            self._hold(
                (number, exchange, routing_key, mandatory, immediate, route_raw, props_raw, body)
            )
            return
        try:
            ch.publish(exchange, routing_key, mandatory, immediate, route_raw, props_raw, body)
        except ChannelError as e:
            self.close_channel(ch, e.code, e.text, e.class_id or 60, e.method_id or 40)

    def close_channel(
        self, ch: Channel, code: int, text: str, class_id: int = 0, method_id: int = 0
    ) -> None:
        log.info("channel %d of connection %s closed: %s", ch.number, self.id, _text(code, text))
        ch.teardown()
        ch.closing = True
        self.reader.drop_content(ch.number)
        self.send_method(
            ch.number,
            spec.ChannelClose(
                reply_code=code,
                reply_text=_text(code, text),
                class_id=class_id,
                method_id=method_id,
            ),
        )

    def protocol_error(self, channel: int, e: ChannelError | ConnectionError091) -> None:
        """An error found outside `data_received` (after an awaited metadata command)."""
        ch = self.channels.get(channel)
        if isinstance(e, ChannelError) and ch is not None:
            self.close_channel(ch, e.code, e.text, e.class_id, e.method_id)
        else:
            self.close_connection(e.code, e.text, e.class_id, e.method_id)

    # -- closing ------------------------------------------------------------------------------

    def close_connection(self, code: int, text: str, class_id: int = 0, method_id: int = 0) -> None:
        """Send connection.close and wait (bounded) for close-ok."""
        if self.state in ("closing", "closed"):
            return
        if self.state == "header":
            self.state = "closed"
            self.shell.close()
            return
        log.info(
            "connection %s from %s closed by the server: %s", self.id, self.peer, _text(code, text)
        )
        self.send_method(
            0,
            spec.ConnectionClose(
                reply_code=code,
                reply_text=_text(code, text),
                class_id=class_id,
                method_id=method_id,
            ),
        )
        self.state = "closing"
        self._teardown()
        self.shell.schedule_flush()
        self.shell.close(after=self.settings.close_timeout)

    def _fatal(self, code: int, text: str, class_id: int = 0, method_id: int = 0) -> None:
        """Malformed input: the byte stream cannot be trusted, so close right after connection.close."""
        self.reader.stopped = True
        if self.state not in ("header", "closing", "closed"):
            log.info("connection %s from %s: %s", self.id, self.peer, _text(code, text))
            self.send_method(
                0,
                spec.ConnectionClose(
                    reply_code=code,
                    reply_text=_text(code, text),
                    class_id=class_id,
                    method_id=method_id,
                ),
            )
        self.state = "closed"
        self._teardown()
        self.shell.schedule_flush()
        self.shell.close()

    def connection_lost(self) -> None:
        self.state = "closed"
        self.reader.stopped = True
        self._teardown()

    def _teardown(self) -> list[asyncio.Future]:
        """Release everything the connection holds; returns the pending exclusive-queue deletes."""
        deleting: list[asyncio.Future] = []
        channels = list(self.channels.values())
        self.channels.clear()
        for ch in channels:
            if ch.is_open:
                ch.teardown()
        self.confirm_dirty.clear()
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None
        self.broker.connections.discard(self)
        if self.exclusive_queues:
            from ..metadata import commands as cmds

            names, self.exclusive_queues = self.exclusive_queues, set()
            for name in names:
                if self.broker.state.queue(self.vhost, name) is not None:
                    fut = self.broker.propose(cmds.DeleteQueue(self.vhost, name))
                    fut.add_done_callback(lambda f: f.exception())
                    deleting.append(fut)
        return deleting

    # -- timers and flow ----------------------------------------------------------------------

    @property
    def tick_interval(self) -> float:
        """A quarter of the negotiated heartbeat: each tick sends a heartbeat if nothing else
        went out since the last one, so the peer never waits more than half an interval; every
        fourth tick checks the peer."""
        return self.heartbeat / 4

    def heartbeat_tick(self) -> bool:
        """Called every tick_interval seconds; False when the peer has been silent too long.

        A heartbeat goes out at every tick (a quarter interval) after which nothing else did: a
        client may give up after one silent interval (@cloudamqp/amqp-client does), so the gap
        between two writes stays under half an interval. As RabbitMQ, the peer is checked once
        per interval and dropped after two checks in a row found it silent, i.e. between two and
        three intervals after its last frame."""
        self.ticks += 1
        if self.ticks % 4 == 0:
            if self.recv_activity or self.held_publish is not None:
                # A blocked connection is not read, so its heartbeats go unseen: as RabbitMQ,
                # the peer is not checked while it is blocked.
                self.recv_activity = False
                self.silent_checks = 0
            else:
                self.silent_checks += 1
                if self.silent_checks >= 2:
                    log.warning(
                        "connection %s from %s: missed heartbeats, timeout %ds",
                        self.id,
                        self.peer,
                        self.heartbeat,
                    )
                    self.state = "closed"
                    self.reader.stopped = True
                    self._teardown()
                    return False
        # Writing our own heartbeat sets send_activity too: it is not traffic.
        sent = self.send_activity and not self.beat_sent
        self.send_activity = False
        self.beat_sent = False
        if not sent and not self.out:
            self.send(render.HEARTBEAT)
            self.beat_sent = True
        return True

    # -- acknowledgement timeout (RabbitMQ's consumer_timeout) --------------------------------

    def watch_acks(self, q: QueueHandle) -> None:
        """A channel consumes from `q` in ack mode, or its oldest delivery now comes from it
        (basic.get): have a check come within that queue's check period."""
        period = check_period(self.broker.consumer_timeout_of(q))
        due = self.clock() + period
        if self._ack_timer is not None:
            if due >= self._ack_due:
                return
            self._ack_timer.cancel()
        self._ack_due = due
        self._ack_timer = self.shell.call_later(period, self._ack_tick)

    def _ack_tick(self) -> None:
        self._ack_timer = None
        if self.state != "running":
            return
        now = self.clock()
        if now - self._ack_due > LATE_CHECK and not self._ack_deferred:
            # The loop was held up (a busy or paused process): acks may be waiting unread, and
            # uvloop (libuv) runs due timers before it polls the sockets. Check once it has.
            self._ack_deferred = True
            self._ack_due = now
            self._ack_timer = self.shell.call_later(0, self._ack_tick)
            return
        self._ack_deferred = False
        period = self.check_acks(now)
        if period is not None:
            self._ack_due = now + period
            self._ack_timer = self.shell.call_later(period, self._ack_tick)

    def check_acks(self, now: float) -> float | None:
        """Close every channel whose oldest unacknowledged delivery has been waiting longer
        than its queue's timeout, with 406 and RabbitMQ's text (its deliveries go back to their
        queues, as on any channel close). Returns the seconds until the next check: a quarter of
        the shortest timeout of the queues concerned (the oldest deliveries' and ack-mode
        consumers'), at most a minute; None when no channel has either, and checks stop."""
        timeouts: dict[int, int | None] = {}  # by id of the queue handle, for this check

        def timeout_of(q: QueueHandle) -> int | None:
            key = id(q)
            if key not in timeouts:
                timeouts[key] = self.broker.consumer_timeout_of(q)
            return timeouts[key]

        watching = False
        for ch in list(self.channels.values()):
            if not ch.is_open or ch.closing:
                continue
            timeout = ch.ack_timeout_check(now, timeout_of)
            if timeout is not None:
                self._ack_timed_out(ch, timeout)
                continue
            if ch.unacked:
                watching = True
            for c in ch.consumers.values():
                if not c.no_ack:
                    watching = True
                    timeout_of(c.queue)
        if not watching:
            return None
        return check_period(min((t for t in timeouts.values() if t is not None), default=None))

    def _ack_timed_out(self, ch: Channel, timeout: int) -> None:
        tag, (q, _msg, consumer) = next(iter(ch.unacked.items()))
        log.warning(
            "connection %s from %s: consumer '%s' on channel %d and queue '%s' in vhost '%s' "
            "has timed out waiting for a consumer acknowledgement of a delivery with delivery "
            "tag = %d. Timeout used: %d ms",
            self.id,
            self.peer,
            consumer.tag if consumer is not None else "(basic.get)",
            ch.number,
            q.name,
            q.vhost,
            tag,
            timeout,
        )
        self.close_channel(
            ch,
            PRECONDITION_FAILED,
            f"delivery acknowledgement on channel {ch.number} timed out. Timeout value used: "
            f"{timeout} ms. This timeout value can be configured, see consumers doc guide to "
            "learn more",
        )

    def on_alarm(self, resources: frozenset[str]) -> None:
        """The resource alarms in effect in the cluster are now `resources` (empty: none).

        As RabbitMQ, nothing is sent while the connection only stands "blocking": a consumer
        that never publishes goes on undisturbed (pika's blocked_connection_timeout would tear it
        down otherwise), and a client sees connection.blocked once it publishes (`_hold`), after
        it had the chance to register for it. Another alarm joining, or one of two clearing,
        changes nothing until the last one clears."""
        if self.state != "running":
            return
        if resources:
            self.blocked = True
            return
        if not self.blocked:
            return
        self.blocked = False
        if self.blocked_sent:
            self.blocked_sent = False
            if self.capabilities.get("connection.blocked"):
                self.send_method(0, spec.ConnectionUnblocked())
        held, self.held_publish = self.held_publish, None
        if held is None:
            return
        # The held message goes on as if it had just arrived, then whatever the client sent
        # after it (the reader kept it), then the socket again.
        self.reader.held = False
        ch = self.channels.get(held[0])
        if ch is not None and not ch.closing:
            self.on_publish(*held)
        self.data_received(b"")
        if self.held_publish is None and not self._flow_blocked_by and self.state != "closed":
            self.shell.set_reading(True)

    def _hold(self, publish: tuple[Any, ...]) -> None:
        """A publish while an alarm stands: it waits, and so does everything after it."""
        self.held_publish = publish
        self.reader.held = True
        self.shell.set_reading(False)
        if not self.blocked_sent:
            self.blocked_sent = True
            if self.capabilities.get("connection.blocked"):
                reason = blocked_reason(self.broker.blocked_by)
                self.send_method(0, spec.ConnectionBlocked(reason=reason))

    def force_close(self, reason: str = "shutdown") -> None:
        self.close_connection(320, f"broker forced connection closure with reason '{reason}'")


def _source(peer: Any) -> str | None:
    """The client's address, as the login throttle counts it."""
    return str(peer[0]) if isinstance(peer, tuple) and peer else None


def _credentials(mechanism: str, response: bytes) -> tuple[str, str]:
    if mechanism == "PLAIN":
        parts = response.split(b"\x00")
        if len(parts) != 3:
            raise ValueError("ACCESS_REFUSED - malformed PLAIN response")
        return parts[1].decode("utf-8", "replace"), parts[2].decode("utf-8", "replace")
    if mechanism == "AMQPLAIN":
        # A field table without its length prefix.
        try:
            table, _ = decode_table(len(response).to_bytes(4, "big") + response, 0)
        except DecodeError:
            raise ValueError("ACCESS_REFUSED - malformed AMQPLAIN response")
        login, password = table.get("LOGIN"), table.get("PASSWORD")
        if isinstance(login, bytes):
            login = login.decode("utf-8", "replace")
        if isinstance(password, bytes):
            password = password.decode("utf-8", "replace")
        if not isinstance(login, str) or not isinstance(password, str):
            raise ValueError("ACCESS_REFUSED - AMQPLAIN response without LOGIN and PASSWORD")
        return login, password
    raise ValueError(f"ACCESS_REFUSED - unsupported authentication mechanism '{mechanism}'")


__all__ = ["Connection091", "Settings", "Shell", "UNEXPECTED_FRAME"]
