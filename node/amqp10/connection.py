"""The AMQP 1.0 connection: SASL, open/close, sessions, links, settlement — sans-I/O.

Theory of operation: the listener (node.listener, which picks the protocol from the 8-byte header)
feeds received bytes to `data_received` and writes what `take_output` returns; this class implements
its `FrontEnd` protocol and calls it back through `Shell`, as 0-9-1's connection does. `Connection10` never touches a socket.

Connection states, in order: `header` (waiting for a protocol header: SASL or AMQP), `sasl-init`
(mechanisms sent), `sasl-done` (outcome sent, waiting for the AMQP header), `open` (headers exchanged,
waiting for the client's open), `running`, then `closing` (we sent close, waiting for the client's)
and `closed`. Sessions (`Session`) live in `session.py`, links (`SenderLink`: we send, the core's
Consumer of a queue; `ReceiverLink`: the client publishes) in `links.py`, and the RabbitMQ addresses
they attach to in `addresses.py`. Everything that changes connection state lives in this file.

Errors: `ConnectionError10` closes the connection with an AMQP error condition; `SessionError10`
ends one session; `LinkError10` detaches one link. Malformed bytes (`DecodeError`, framing errors)
close the connection at once: the rest of the stream cannot be trusted.
"""

from __future__ import annotations

import logging
import struct
import time
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..broker import AuthError, Broker
from ..core.limits import LimitExceeded
from ..core.output import OutputBuffer
from ..metadata import commands as cmds
from . import performatives as P
from .codec import DecodeError, Symbol, symbol_array
from .errors import ConnectionError10, LinkError10, SessionError10
from .links import OUT_LIMIT
from .session import Session

if TYPE_CHECKING:
    from ..listener import Shell

log = logging.getLogger("merpati.amqp10")

HEADER_AMQP = b"AMQP\x00\x01\x00\x00"
HEADER_SASL = b"AMQP\x03\x01\x00\x00"
MIN_MAX_FRAME = 512
HEARTBEAT_FRAME = b"\x00\x00\x00\x08\x02\x00\x00\x00"
_frame_head = struct.Struct(">IBBH")
_unpack_head = _frame_head.unpack_from

_ids = iter(range(1, 2**62))


class Settings10:
    """What an AMQP 1.0 connection needs from the node's configuration."""

    def __init__(
        self,
        frame_max: int = 131072,
        channel_max: int = 2047,
        heartbeat: int = 60,
        max_message_size: int = 128 * 1024 * 1024,
        anonymous: bool = False,
        anonymous_user: str = "guest",
        anonymous_pass: str = "guest",
        close_timeout: float = 3.0,
    ) -> None:
        self.frame_max = frame_max
        self.channel_max = channel_max
        self.heartbeat = heartbeat
        self.max_message_size = max_message_size
        self.anonymous = anonymous
        self.anonymous_user = anonymous_user
        self.anonymous_pass = anonymous_pass
        self.close_timeout = close_timeout

    @classmethod
    def from_config(cls, config: Any) -> Settings10:
        return cls(
            frame_max=max(config.frame_max, MIN_MAX_FRAME),
            channel_max=config.channel_max,
            heartbeat=config.heartbeat,
            max_message_size=config.max_message_size,
            anonymous=bool(getattr(config, "amqp10_anonymous", True)),
            anonymous_user=config.default_user,
            anonymous_pass=config.default_pass,
        )


def frame(channel: int, body: bytes, payload: bytes = b"") -> bytes:
    return _frame_head.pack(8 + len(body) + len(payload), 2, 0, channel) + body + payload


def sasl_frame(body: bytes) -> bytes:
    return _frame_head.pack(8 + len(body), 2, 1, 0) + body


class Connection10(OutputBuffer):
    def __init__(
        self,
        broker: Broker,
        shell: Shell,
        peer: Any,
        loopback: bool,
        settings: Settings10 | None = None,
    ) -> None:
        self.broker = broker
        self.shell = shell
        self.peer = peer
        self.loopback = loopback
        self.settings = settings or Settings10()
        # The subject CN of a verified TLS client certificate: SASL EXTERNAL is offered for it.
        self.tls_user: str | None = None
        self.id = f"{broker.node_id}/{broker.incarnation}/amqp10-{next(_ids)}"
        self.state = "header"
        self.protocol = "amqp10"
        self.user = ""
        self.vhost = ""
        self.container_id = ""
        self.authenticated = False
        self.max_frame = self.settings.frame_max  # what we accept
        self.out_max_frame = MIN_MAX_FRAME  # what the client accepts
        self.channel_max = self.settings.channel_max
        self.sessions: dict[int, Session] = {}
        self.ending: set[int] = set()  # channels whose end we sent and await
        self._buf = bytearray()
        self._need = 0
        self.init_output()
        self.dirty: set[Session] = set()
        self.blocked = False
        self.exclusive_queues: set[str] = set()
        # Idle timeout: the shell ticks every `tick_interval` seconds (half the shorter of the two
        # idle timeouts); `heartbeat` is twice that, as the management API shows it.
        self.tick_interval = 0.0
        self.heartbeat = 0.0
        self.idle_in = 0.0  # seconds of silence from the peer we tolerate
        self.idle_out = 0.0  # the peer's idle timeout: we must send within half of it
        self.recv_activity = False
        self.last_recv = time.monotonic()
        self.last_send = time.monotonic()

    # -- output -------------------------------------------------------------------------------

    def send_frame(self, channel: int, perf: Any, payload: bytes = b"") -> None:
        self.send(frame(channel, perf.encode_amqp(), payload))

    # OutputBuffer hooks: pending dispositions go out with each flush.

    def _pending_output(self) -> bool:
        return bool(self.dirty)

    def _flush_pending(self) -> None:
        if self.dirty:
            for s in self.dirty:
                s.flush_dispositions()
            self.dirty.clear()

    def _kick_consumers(self) -> None:
        for s in list(self.sessions.values()):
            s.kick_senders()

    def room(self) -> bool:
        """True when deliveries may be written now (else they wait for the socket)."""
        if self.write_paused or self.out_bytes > OUT_LIMIT:
            self.starved = True
            return False
        return True

    # -- input --------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self.recv_activity = True
        if self.state == "closed":
            return
        self.receiving = True
        try:
            self._feed(data)
        except (DecodeError, _FramingError, ConnectionError10) as e:
            self._error(e)
        except Exception:
            log.exception("internal error on AMQP 1.0 connection %s", self.id)
            self._fatal("amqp:internal-error", "internal error while handling a frame")
        finally:
            self.receiving = False
        if self.out:
            self.flush_soon()

    def _feed(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        if len(buf) < self._need:
            return
        pos = 0
        n = len(buf)
        try:
            while pos < n and self.state != "closed":
                state = self.state
                if state in ("header", "sasl-done"):
                    if n - pos < 8:
                        if not b"AMQP".startswith(bytes(buf[pos : min(n, pos + 4)])):
                            self._bad_header()
                            return
                        break
                    self._header(bytes(buf[pos : pos + 8]))
                    pos += 8
                    continue
                if n - pos < 8:
                    self._need = 8
                    break
                size, doff, ftype, channel = _unpack_head(buf, pos)
                if size > self.max_frame:
                    raise _FramingError(
                        "amqp:connection:framing-error",
                        f"frame of {size} bytes exceeds max-frame-size {self.max_frame}",
                    )
                if size < 8 or doff < 2 or doff * 4 > size:
                    raise _FramingError(
                        "amqp:connection:framing-error",
                        f"malformed frame header (size {size}, data offset {doff})",
                    )
                if n - pos < size:
                    self._need = size
                    break
                body = bytes(buf[pos + doff * 4 : pos + size])
                pos += size
                self._need = 0
                if ftype == 0:
                    self._frame(channel, body)
                elif ftype == 1:
                    self._sasl_frame(body)
                else:
                    raise _FramingError(
                        "amqp:connection:framing-error", f"unknown frame type {ftype}"
                    )
        finally:
            if pos:
                del buf[:pos]
            if not buf:
                self._need = 0

    # -- headers and SASL ---------------------------------------------------------------------

    def _header(self, header: bytes) -> None:
        if self.state == "header" and header == HEADER_SASL:
            self.send(HEADER_SASL)
            mechs = (
                (["EXTERNAL"] if self.tls_user else [])
                + ["PLAIN"]
                + (["ANONYMOUS"] if self.settings.anonymous else [])
            )
            self.send(
                sasl_frame(
                    P.SaslMechanisms(
                        sasl_server_mechanisms=[Symbol(m) for m in mechs]
                    ).encode_amqp()
                )
            )
            self.state = "sasl-init"
            return
        if header != HEADER_AMQP:
            self._bad_header()
            return
        self.send(HEADER_AMQP)
        if self.state == "header":
            # No SASL layer: only allowed as the anonymous user.
            if not self.settings.anonymous:
                self.state = "open"
                self._refuse_open("amqp:unauthorized-access", "SASL authentication is required")
                return
            try:
                self.user = self._anonymous()
            except AuthError as e:
                self.state = "open"
                self._refuse_open("amqp:unauthorized-access", str(e))
                return
        self.state = "open"

    def _bad_header(self) -> None:
        self.state = "closed"
        self.out.append(HEADER_SASL)
        self.shell.schedule_flush()
        self.shell.close()

    def _anonymous(self) -> str:
        s = self.settings
        return self.broker.authenticate(s.anonymous_user, s.anonymous_pass, self.loopback)

    def _sasl_frame(self, body: bytes) -> None:
        perf, _ = P.decode_body(body)
        if self.state != "sasl-init" or not isinstance(perf, P.SaslInit):
            raise _FramingError(
                "amqp:connection:framing-error",
                f"unexpected SASL frame {type(perf).__name__} in state {self.state}",
            )
        mech = perf.mechanism
        try:
            if mech == "PLAIN":
                parts = (perf.initial_response or b"").split(b"\x00")
                if len(parts) != 3:
                    raise AuthError("malformed PLAIN response")
                user = parts[1].decode("utf-8", "replace")
                password = parts[2].decode("utf-8", "replace")
                source = self.peer[0] if isinstance(self.peer, tuple) else None
                self.user = self.broker.authenticate(user, password, self.loopback, source)
            elif mech == "ANONYMOUS" and self.settings.anonymous:
                self.user = self._anonymous()
            elif mech == "EXTERNAL":
                self.user = self.broker.authenticate_external(self.tls_user, self.loopback)
            else:
                raise AuthError(f"unsupported mechanism {mech}")
        except AuthError as e:
            log.warning("AMQP 1.0 connection %s from %s refused: %s", self.id, self.peer, e)
            self.send(sasl_frame(P.SaslOutcome(code=1).encode_amqp()))
            self.state = "closed"
            self.shell.schedule_flush()
            self.shell.close()
            return
        self.authenticated = True
        self.send(sasl_frame(P.SaslOutcome(code=0).encode_amqp()))
        self.state = "sasl-done"

    # -- frames -------------------------------------------------------------------------------

    def _frame(self, channel: int, body: bytes) -> None:
        if not body:
            return  # an empty frame: heartbeat
        state = self.state
        if state == "running":
            if body[:3] == b"\x00\x53\x14":
                fast = P.fast_transfer(body)
                perf, off = fast if fast is not None else P.decode_body(body)
                s = self.sessions.get(channel)
                if s is None:
                    if channel in self.ending:
                        return
                    raise ConnectionError10(
                        "amqp:not-allowed", f"transfer on channel {channel} without a session"
                    )
                if s.parked is not None:
                    s.parked.append((perf, body, off, True))
                    return
                try:
                    s.on_transfer(perf, body, off)
                except SessionError10 as e:
                    self.end_session(s, e.condition, e.description)
                return
            perf, off = P.decode_body(body)
            if channel == 0 and isinstance(perf, P.Close):
                self._on_close(perf)
                return
            if isinstance(perf, P.Open):
                raise ConnectionError10("amqp:illegal-state", "second open on the connection")
            self._session_frame(channel, perf, body, off)
            return
        if state == "open":
            perf, _ = P.decode_body(body)
            if not isinstance(perf, P.Open) or channel != 0:
                raise ConnectionError10(
                    "amqp:illegal-state", f"expected open on channel 0, got {type(perf).__name__}"
                )
            self._on_open(perf)
            return
        if state == "closing":
            perf, _ = P.decode_body(body)
            if isinstance(perf, P.Close):
                self.state = "closed"
                self.shell.close()
            return
        raise _FramingError(
            "amqp:connection:framing-error", f"AMQP frame in connection state {state}"
        )

    def _on_open(self, o: Any) -> None:
        self.container_id = o.container_id
        s = self.settings
        self.send_frame(
            0,
            P.Open(
                container_id=self.broker.node_id,
                max_frame_size=self.max_frame,
                channel_max=self.settings.channel_max,
                idle_time_out=s.heartbeat * 1000 if s.heartbeat else None,
                offered_capabilities=[Symbol("ANONYMOUS-RELAY")],
                properties={
                    Symbol("product"): "Merpati",
                    Symbol("version"): __version__,
                    Symbol("platform"): "Python",
                    Symbol("cluster_name"): self.broker.node_id,
                },
            ),
        )
        max_frame = o.max_frame_size if o.max_frame_size is not None else 2**32 - 1
        if max_frame < MIN_MAX_FRAME:
            self.state = "running"
            self.close_connection(
                "amqp:frame-size-too-small",
                f"max-frame-size {max_frame} is below the minimum of {MIN_MAX_FRAME}",
            )
            return
        self.out_max_frame = min(max_frame, 1 << 20)
        if o.channel_max is not None:
            self.channel_max = min(self.channel_max, o.channel_max)
        hostname = o.hostname or ""
        vhost = hostname[6:] if hostname.startswith("vhost:") else "/"
        self.state = "running"
        if vhost not in self.broker.state.vhosts:
            self.close_connection("amqp:not-found", f"vhost '{vhost}' not found")
            return
        try:
            self.broker.check_connection(self.user, vhost)
        except LimitExceeded as e:
            # RabbitMQ 4's answer (rabbit_amqp_reader): open, then close with this condition.
            self.close_connection("amqp:resource-limit-exceeded", e.text10)
            return
        if not self.broker.vhost_allowed(self.user, vhost):
            self.close_connection(
                "amqp:unauthorized-access",
                f"access to vhost '{vhost}' refused for user '{self.user}'",
            )
            return
        self.vhost = vhost
        self.broker.connections.add(self)
        if o.idle_time_out:
            self.idle_out = o.idle_time_out / 1000.0
        if s.heartbeat:
            self.idle_in = float(s.heartbeat)
        ticks = [t for t in (self.idle_in / 2, self.idle_out / 2) if t]
        self.tick_interval = min(ticks) if ticks else 0.0
        self.heartbeat = 2 * self.tick_interval
        self.last_recv = self.last_send = time.monotonic()
        if self.broker.blocked:
            self.blocked = True

    def _refuse_open(self, condition: str, description: str) -> None:
        """Answer a client we will not serve with open + close, so it sees why."""
        self.send_frame(0, P.Open(container_id=self.broker.node_id))
        self.send_frame(0, P.Close(error=P.error(condition, description)))
        self.state = "closed"
        self.shell.schedule_flush()
        self.shell.close(after=0.5)

    def _session_frame(self, channel: int, perf: Any, body: bytes, off: int) -> None:
        s = self.sessions.get(channel)
        if isinstance(perf, P.Begin):
            if s is not None or channel in self.ending:
                raise ConnectionError10(
                    "amqp:illegal-state", f"begin on channel {channel}, which has a session"
                )
            if perf.remote_channel is not None:
                raise ConnectionError10(
                    "amqp:not-allowed", "begin with a remote-channel: the node begins no sessions"
                )
            if channel > self.channel_max:
                raise ConnectionError10(
                    "amqp:connection:framing-error",
                    f"channel {channel} exceeds channel-max {self.channel_max}",
                )
            s = Session(self, channel, perf)
            self.sessions[channel] = s
            s.send_begin()
            return
        if s is None:
            if channel in self.ending:
                if isinstance(perf, P.End):
                    self.ending.discard(channel)
                return
            raise ConnectionError10(
                "amqp:not-allowed",
                f"{type(perf).__name__.lower()} on channel {channel} without a session",
            )
        if s.parked is not None:
            s.parked.append((perf, body, off, False))
            return
        if isinstance(perf, P.End):
            s.teardown()
            del self.sessions[channel]
            self.dirty.discard(s)
            self.send_frame(channel, P.End())
            return
        try:
            s.on_frame(perf, body, off)
        except SessionError10 as e:
            self.end_session(s, e.condition, e.description)

    def replay(self, s: Session, item: tuple[Any, bytes, int, bool]) -> None:
        """A frame the session held while it waited (Session.park), handled now."""
        perf, body, off, transfer = item
        try:
            if transfer:
                s.on_transfer(perf, body, off)
            else:
                self._session_frame(s.channel, perf, body, off)
        except SessionError10 as e:
            self.end_session(s, e.condition, e.description)
        except (DecodeError, _FramingError, ConnectionError10) as e:
            self._error(e)

    def _error(self, e: Exception) -> None:
        """A connection-level error: malformed input ends the connection at once (its bytes
        cannot be trusted), a protocol violation closes it with its condition."""
        if isinstance(e, DecodeError):
            self._fatal("amqp:decode-error", str(e))
        elif isinstance(e, _FramingError):
            self._fatal(e.condition, e.description)
        elif isinstance(e, ConnectionError10):
            self.close_connection(e.condition, e.description)

    def end_session(self, s: Session, condition: str, description: str) -> None:
        log.info(
            "AMQP 1.0 connection %s: session %d ended: %s %s",
            self.id,
            s.channel,
            condition,
            description,
        )
        s.teardown()
        self.sessions.pop(s.channel, None)
        self.dirty.discard(s)
        self.ending.add(s.channel)
        self.send_frame(s.channel, P.End(error=P.error(condition, description)))

    def _on_close(self, c: Any) -> None:
        if c.error is not None:
            log.info("AMQP 1.0 connection %s closed by the client: %s", self.id, c.error)
        self._teardown()
        self.send_frame(0, P.Close())
        self.state = "closed"
        self.shell.schedule_flush()
        self.shell.close()

    # -- closing ------------------------------------------------------------------------------

    def close_connection(self, condition: str, description: str) -> None:
        if self.state in ("closing", "closed"):
            return
        log.info(
            "AMQP 1.0 connection %s from %s closed by the server: %s %s",
            self.id,
            self.peer,
            condition,
            description,
        )
        if self.state != "running":
            self.send_frame(0, P.Open(container_id=self.broker.node_id))
        self.send_frame(0, P.Close(error=P.error(condition, description)))
        self.state = "closing"
        self._teardown()
        self.shell.schedule_flush()
        self.shell.close(after=self.settings.close_timeout)

    def _fatal(self, condition: str, description: str) -> None:
        if self.state in ("closing", "closed"):
            self.state = "closed"
            self.shell.close()
            return
        log.info(
            "AMQP 1.0 connection %s from %s: %s %s", self.id, self.peer, condition, description
        )
        if self.state in ("open", "running"):
            if self.state == "open":
                self.send_frame(0, P.Open(container_id=self.broker.node_id))
            self.send_frame(0, P.Close(error=P.error(condition, description)))
        self.state = "closed"
        self._teardown()
        self.shell.schedule_flush()
        self.shell.close()

    def connection_lost(self) -> None:
        self.state = "closed"
        self._teardown()

    def _teardown(self) -> None:
        sessions = list(self.sessions.values())
        self.sessions.clear()
        for s in sessions:
            s.teardown()
        self.dirty.clear()
        self.broker.connections.discard(self)
        # The queues of links attached to exchange sources: exclusive to this connection.
        names, self.exclusive_queues = self.exclusive_queues, set()
        for name in names:
            if self.vhost and self.broker.state.queue(self.vhost, name) is not None:
                fut = self.broker.propose(cmds.DeleteQueue(self.vhost, name))
                fut.add_done_callback(lambda f: f.exception())

    def force_close(self, reason: str = "shutdown") -> None:
        self.close_connection(
            "amqp:connection:forced", f"broker forced connection closure with reason '{reason}'"
        )

    # -- timers and alarms --------------------------------------------------------------------

    def heartbeat_tick(self) -> bool:
        now = time.monotonic()
        if self.recv_activity:
            self.recv_activity = False
            self.last_recv = now
        elif self.idle_in and now - self.last_recv > self.idle_in:
            log.warning(
                "AMQP 1.0 connection %s from %s: no frames for %.0fs",
                self.id,
                self.peer,
                now - self.last_recv,
            )
            self.close_connection("amqp:resource-limit-exceeded", "local-idle-timeout expired")
            return True
        if self.send_activity:
            self.send_activity = False
            self.last_send = now
        elif self.idle_out and now - self.last_send >= self.idle_out / 2 - 0.01:
            self.send(HEARTBEAT_FRAME)
            self.last_send = now
        return True

    def on_alarm(self, resources: frozenset[str]) -> None:
        """The resource alarms in effect in the cluster are now `resources` (empty: none).
        While any stands, receiving links get no new credit (RabbitMQ 4 withholds it too);
        when the last clears they are topped up."""
        if self.state != "running":
            return
        was = self.blocked
        self.blocked = bool(resources)
        if was and not self.blocked:
            for s in list(self.sessions.values()):
                s.alarm_cleared()


class _FramingError(Exception):
    def __init__(self, condition: str, description: str) -> None:
        super().__init__(description)
        self.condition = condition
        self.description = description


__all__ = [
    "Connection10",
    "ConnectionError10",
    "LinkError10",
    "SessionError10",
    "Settings10",
    "symbol_array",
]
