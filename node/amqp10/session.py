"""AMQP 1.0 sessions and links, mapped onto the broker core.

A `Session` keeps the session's flow-control windows (counted in transfer frames), the links
attached on it by handle, the deliveries it sent and that await the client's settlement (by
delivery-id), and the publishes whose `accepted` waits for a store commit (as 0-9-1 confirms do).

`SenderLink` is a link on which the node sends: it is the core's `Consumer` of one queue, with
link credit instead of prefetch. `ReceiverLink` is a link on which the client publishes: the node
grants credit, assembles multi-frame transfers, converts the message (node.amqp10.message), routes
it, and settles it with accepted (after the store commit for persistent messages to durable
queues), released (unroutable) or rejected.

Addresses are RabbitMQ 4's v2 addresses: targets /exchanges/NAME/KEY, /exchanges/NAME (key from
the subject), /queues/NAME, or none (each message's `to` names one of these); sources /queues/NAME.
The v1 forms /amq/queue/NAME, /queue/NAME, /exchange/NAME[/KEY] and /topic/KEY are accepted too.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections import deque
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from ..core.message import AMQP10, Message
from ..core.outcome import ACCEPTED, REJECTED, RELEASED, Modified, Outcome
from ..core.publish import UNROUTED
from ..core.queue import QueueHandle
from ..metadata.state import MetadataError
from ..wire.table import encode_shortstr
from . import performatives as P
from .codec import DecodeError
from .errors import LinkError10, SessionError10
from .message import convert, payload_parts, view_of

if TYPE_CHECKING:
    from .connection import Connection10

log = logging.getLogger("merpati.amqp10")

# Deliveries stop once this many bytes wait for the socket (as 0-9-1's channel.OUT_LIMIT).
OUT_LIMIT = 256 * 1024
# Transfer frames the client may send before we widen the window again.
INCOMING_WINDOW = 2048
OUTGOING_WINDOW = 2**31 - 1
# Link credit granted to publishers, topped up when half is used.
PUBLISH_CREDIT = 1000
HANDLE_MAX = 2**16 - 1
# Credit flow: publishers wait for credit while a queue they feed holds more than this many
# messages that its consumers are draining; checked again every HOLD_RECHECK seconds.
HOLD_BACKLOG = 2000
HOLD_RECHECK = 0.002
# A backlog that has not shrunk for this long counts as nobody draining it: credit flows again.
# (A consumer's own credit often comes back in steps further apart than HOLD_RECHECK.)
HOLD_PATIENCE = 0.05
MASK = 0xFFFFFFFF

_pB = struct.Struct(">B").pack
_pI = struct.Struct(">I").pack
_frame_head = struct.Struct(">IBBH").pack


class BadAddress(Exception):
    pass


def _segment(raw: str) -> str:
    if not raw:
        raise BadAddress("empty name")
    return unquote(raw)


def parse_target(address: str) -> tuple[str, str | None]:
    """(exchange, routing key or None to take the message's subject)."""
    if address.startswith("/exchanges/"):
        parts = address[len("/exchanges/") :].split("/")
        ex = _segment(parts[0])
        if ex == "amq.default":
            raise BadAddress("the default exchange is addressed as /queues/NAME")
        if len(parts) == 1:
            return ex, None
        if len(parts) == 2:
            return ex, unquote(parts[1])
        raise BadAddress("too many segments")
    if address.startswith("/queues/"):
        rest = address[len("/queues/") :]
        if "/" in rest:
            raise BadAddress("a queue name has one segment")
        return "", _segment(rest)
    for prefix in ("/amq/queue/", "/queue/"):
        if address.startswith(prefix):
            return "", _segment(address[len(prefix) :])
    if address.startswith("/exchange/"):
        parts = address[len("/exchange/") :].split("/", 1)
        return _segment(parts[0]), (parts[1] if len(parts) == 2 else None)
    if address.startswith("/topic/"):
        return "amq.topic", address[len("/topic/") :]
    raise BadAddress("not a RabbitMQ address (/exchanges/NAME[/KEY] or /queues/NAME)")


def parse_source(address: str) -> str:
    if address.startswith("/queues/"):
        rest = address[len("/queues/") :]
        if "/" in rest:
            raise BadAddress("a queue name has one segment")
        return _segment(rest)
    for prefix in ("/amq/queue/", "/queue/"):
        if address.startswith(prefix):
            return _segment(address[len(prefix) :])
    raise BadAddress("not a queue address (/queues/NAME)")


def _transfer_head(handle: int, did: int, tag: bytes, settled: bool, more: bool) -> bytes:
    fields = (
        _uint(handle)
        + _uint(did)
        + b"\xa0"
        + _pB(len(tag))
        + tag
        + b"\x43"
        + (b"\x41" if settled else b"\x42")
        + (b"\x41" if more else b"")
    )
    return b"\x00\x53\x14\xc0" + _pB(len(fields) + 1) + (b"\x06" if more else b"\x05") + fields


def _uint(v: int) -> bytes:
    if v == 0:
        return b"\x43"
    if v < 256:
        return b"\x52" + _pB(v)
    return b"\x70" + _pI(v)


class Session:
    def __init__(self, conn: Connection10, channel: int, begin: Any) -> None:
        self.conn = conn
        self.broker = conn.broker
        self.channel = channel
        self.links: dict[int, Any] = {}
        self.refused: set[int] = set()  # handles of refused attaches, until the client detaches
        self.senders: list[SenderLink] = []
        # Our outgoing side.
        self.next_outgoing_id = 0
        self.next_delivery_id = 0
        self.remote_incoming_window = begin.incoming_window
        self.pending_frames: deque[bytes] = deque()  # transfer frames beyond the client's window
        # Our incoming side.
        self.next_incoming_id = begin.next_outgoing_id
        self.incoming_window = INCOMING_WINDOW
        self.remote_outgoing_window = begin.outgoing_window
        self.handle_max = min(
            HANDLE_MAX, begin.handle_max if begin.handle_max is not None else MASK
        )
        # delivery-id -> (queue, message, link) for our unsettled deliveries.
        self.unsettled: dict[int, tuple[QueueHandle, Message, SenderLink]] = {}
        # Incoming deliveries to settle: accepted ids batched, and those waiting for the store.
        self.accepts: list[int] = []
        self.pending: deque[tuple[int, int]] = deque()
        self.open = True

    @property
    def vhost(self) -> str:
        return self.conn.vhost

    def send_begin(self) -> None:
        self.conn.send_frame(
            self.channel,
            P.Begin(
                remote_channel=self.channel,
                next_outgoing_id=self.next_outgoing_id,
                incoming_window=self.incoming_window,
                outgoing_window=OUTGOING_WINDOW,
                handle_max=self.handle_max,
            ),
        )

    def flow(self, link: Any = None, drain: bool = False, echo: bool = False) -> None:
        f = P.Flow(
            next_incoming_id=self.next_incoming_id,
            incoming_window=self.incoming_window,
            next_outgoing_id=self.next_outgoing_id,
            outgoing_window=OUTGOING_WINDOW,
        )
        if link is not None:
            f.handle = link.handle
            f.delivery_count = link.delivery_count
            f.link_credit = link.credit
            f.drain = drain or None
            f.echo = echo or None
            if isinstance(link, SenderLink):
                f.available = link.available()
        self.conn.send_frame(self.channel, f)

    # -- frames -------------------------------------------------------------------------------

    def on_frame(self, perf: Any, body: bytes, off: int) -> None:
        if isinstance(perf, P.Attach):
            self.on_attach(perf)
        elif isinstance(perf, P.Flow):
            self.on_flow(perf)
        elif isinstance(perf, P.Disposition):
            self.on_disposition(perf)
        elif isinstance(perf, P.Detach):
            self.on_detach(perf)
        elif isinstance(perf, P.Transfer):
            self.on_transfer(perf, body, off)
        else:
            raise SessionError10(
                "amqp:illegal-state", f"unexpected {type(perf).__name__.lower()} on a session"
            )

    def _link(self, handle: int, what: str) -> Any:
        link = self.links.get(handle)
        if link is None:
            raise SessionError10(
                "amqp:session:unattached-handle",
                f"{what} on handle {handle}, which is not attached",
            )
        return link

    def on_transfer(self, t: Any, body: bytes, off: int) -> None:
        link = self.links.get(t.handle)
        if link is None:
            raise SessionError10(
                "amqp:session:unattached-handle",
                f"transfer on handle {t.handle}, which is not attached",
            )
        if self.incoming_window <= 0:
            raise SessionError10(
                "amqp:session:window-violation", "transfer beyond the session's incoming window"
            )
        self.incoming_window -= 1
        self.next_incoming_id = (self.next_incoming_id + 1) & MASK
        if not isinstance(link, ReceiverLink):
            raise SessionError10(
                "amqp:session:errant-link", "transfer on a link on which the node is the sender"
            )
        if link.detached:
            return
        try:
            link.on_transfer(t, body, off)
        except LinkError10 as e:
            self.detach(link, e.condition, e.description)
        if self.incoming_window <= INCOMING_WINDOW // 2:
            self.incoming_window = INCOMING_WINDOW
            self.flow()

    def on_attach(self, a: Any) -> None:
        if a.handle in self.links or a.handle in self.refused:
            raise SessionError10("amqp:session:handle-in-use", f"handle {a.handle} is in use")
        if a.handle > self.handle_max:
            raise SessionError10(
                "amqp:not-allowed",
                f"handle {a.handle} exceeds handle-max {self.handle_max}",
            )
        try:
            if a.role:  # the client receives: the node sends from a queue
                link: Any = self._attach_sender(a)
            else:
                link = self._attach_receiver(a)
        except LinkError10 as e:
            self._refuse(a, e.condition, e.description)
            return
        except MetadataError as e:
            self._refuse(
                a,
                "amqp:unauthorized-access" if e.code == 403 else "amqp:precondition-failed",
                e.text,
            )
            return
        self.links[a.handle] = link

    def _refuse(self, a: Any, condition: str, description: str) -> None:
        """The spec's refusal: an attach with a null terminus, then a detach with the error."""
        self.refused.add(a.handle)
        reply = P.Attach(
            name=a.name,
            handle=a.handle,
            role=not a.role,
            source=None if a.role else a.source,
            target=a.target if a.role else None,
            initial_delivery_count=0 if a.role else None,
        )
        self.conn.send_frame(self.channel, reply)
        self.conn.send_frame(
            self.channel,
            P.Detach(handle=a.handle, closed=True, error=P.error(condition, description)),
        )

    def _attach_receiver(self, a: Any) -> ReceiverLink:
        target = a.target
        if isinstance(target, P.Coordinator) or (
            target is not None and not isinstance(target, P.Target)
        ):
            raise LinkError10("amqp:not-implemented", "transactions are not supported")
        address = target.address if target is not None else None
        exchange: str | None = None
        key: str | None = None
        if address is not None:
            if not isinstance(address, str):
                raise LinkError10("amqp:invalid-field", "target address is not a string")
            try:
                exchange, key = parse_target(address)
            except BadAddress as e:
                raise LinkError10("amqp:invalid-field", f"bad target address '{address}': {e}")
            self._check_exchange(exchange, key)
        link = ReceiverLink(self, a, exchange, key)
        self.conn.send_frame(
            self.channel,
            P.Attach(
                name=a.name,
                handle=a.handle,
                role=True,
                snd_settle_mode=a.snd_settle_mode,
                rcv_settle_mode=0,
                source=a.source,
                target=a.target,
                max_message_size=self.conn.settings.max_message_size,
            ),
        )
        if not self.conn.blocked:
            link.credit = PUBLISH_CREDIT
            self.flow(link)
        return link

    def _check_exchange(self, exchange: str, key: str | None) -> None:
        broker = self.broker
        vhost = self.vhost
        if exchange == "":
            if key is not None and broker.state.queue(vhost, key) is None:
                raise LinkError10("amqp:not-found", f"no queue '{key}' in vhost '{vhost}'")
        else:
            ex = broker.state.exchange(vhost, exchange)
            if ex is None:
                raise LinkError10("amqp:not-found", f"no exchange '{exchange}' in vhost '{vhost}'")
            if ex.internal:
                raise LinkError10(
                    "amqp:unauthorized-access",
                    f"cannot publish to internal exchange '{exchange}' in vhost '{vhost}'",
                )
        broker.check(self.conn.user, vhost, "write", "exchange", exchange)

    def _attach_sender(self, a: Any) -> SenderLink:
        source = a.source
        if not isinstance(source, P.Source):
            raise LinkError10("amqp:invalid-field", "attach without a source")
        if source.dynamic:
            raise LinkError10("amqp:not-implemented", "dynamic sources are not supported")
        address = source.address
        if not isinstance(address, str):
            raise LinkError10("amqp:invalid-field", "source address is not a string")
        try:
            name = parse_source(address)
        except BadAddress as e:
            raise LinkError10("amqp:invalid-field", f"bad source address '{address}': {e}")
        vhost = self.vhost
        qdef = self.broker.state.queue(vhost, name)
        q = self.broker.queue(vhost, name)
        if qdef is None or q is None:
            raise LinkError10("amqp:not-found", f"no queue '{name}' in vhost '{vhost}'")
        self.broker.check(self.conn.user, vhost, "read", "queue", name)
        if qdef.exclusive_owner is not None and qdef.exclusive_owner != self.conn.id:
            raise LinkError10(
                "amqp:resource-locked",
                f"cannot obtain exclusive access to locked queue '{name}' in vhost '{vhost}'",
            )
        if q.has_exclusive_consumer():
            raise LinkError10(
                "amqp:resource-locked",
                f"queue '{name}' in vhost '{vhost}' has an exclusive consumer",
            )
        link = SenderLink(self, a, q)
        self.conn.send_frame(
            self.channel,
            P.Attach(
                name=a.name,
                handle=a.handle,
                role=False,
                snd_settle_mode=a.snd_settle_mode,
                rcv_settle_mode=0,
                source=a.source,
                target=a.target,
                initial_delivery_count=0,
            ),
        )
        self.senders.append(link)
        q.subscribe(link)
        return link

    def on_flow(self, f: Any) -> None:
        # Session part: how many more transfer frames the client takes.
        nid = f.next_incoming_id if f.next_incoming_id is not None else 0
        self.remote_incoming_window = (nid + f.incoming_window - self.next_outgoing_id) & MASK
        if self.remote_incoming_window > 2**31:
            self.remote_incoming_window = 0
        self.remote_outgoing_window = f.outgoing_window
        self._send_pending()
        if f.handle is None:
            if f.echo:
                self.flow()
            if self.remote_incoming_window and not self.pending_frames:
                self.kick_senders()
            return
        link = self._link(f.handle, "flow")
        link.on_flow(f)

    def on_disposition(self, d: Any) -> None:
        if not d.role:
            return  # the client settling its own transfers to us: nothing to do
        state = d.state
        modified = None
        if state is None:
            if not d.settled:
                return
            outcome = ACCEPTED
        elif isinstance(state, P.Accepted):
            outcome = ACCEPTED
        elif isinstance(state, P.Rejected):
            outcome = REJECTED
        elif isinstance(state, P.Released):
            outcome = RELEASED
        elif isinstance(state, P.Modified):
            outcome = Outcome.MODIFIED
            modified = Modified(
                bool(state.delivery_failed),
                bool(state.undeliverable_here),
                dict(state.message_annotations or {}),
            )

        else:
            return  # received (or unknown): not terminal
        first = d.first
        last = d.last if d.last is not None else first
        unsettled = self.unsettled
        if last < first:
            return
        ids = (
            range(first, last + 1)
            if last - first <= len(unsettled)
            else sorted(k for k in unsettled if first <= k <= last)
        )
        touched: set[SenderLink] = set()
        for did in ids:
            entry = unsettled.pop(did, None)
            if entry is None:
                continue
            q, msg, link = entry
            link.unsettled -= 1
            touched.add(link)
            if modified is not None:
                q.settle(msg, outcome, _with_consumer(modified, link))
            else:
                q.settle(msg, outcome)
        for link in touched:
            if not link.detached:
                link.queue.kick()

    def on_detach(self, d: Any) -> None:
        if d.handle in self.refused:
            self.refused.discard(d.handle)  # the answer to our refusal: the handle is free
            return
        link = self._link(d.handle, "detach")
        del self.links[d.handle]
        if d.error is not None:
            log.info("AMQP 1.0 link detached by the client: %s", d.error)
        if not link.detached:
            link.teardown()
            self.conn.send_frame(self.channel, P.Detach(handle=d.handle, closed=d.closed))

    def detach(self, link: Any, condition: str, description: str) -> None:
        """Detach a link with an error; the client's answering detach frees the handle."""
        if link.detached:
            return
        log.info(
            "AMQP 1.0 connection %s: link '%s' detached: %s %s",
            self.conn.id,
            link.name,
            condition,
            description,
        )
        link.teardown()
        self.conn.send_frame(
            self.channel,
            P.Detach(handle=link.handle, closed=True, error=P.error(condition, description)),
        )
        self.conn.flush_soon()

    # -- sending ------------------------------------------------------------------------------

    def _send_pending(self) -> None:
        pending = self.pending_frames
        conn = self.conn
        while pending and self.remote_incoming_window > 0:
            conn.send(pending.popleft())
            self.remote_incoming_window -= 1
            self.next_outgoing_id = (self.next_outgoing_id + 1) & MASK

    def kick_senders(self) -> None:
        for link in list(self.senders):
            if not link.detached:
                link.queue.kick()
                link.finish_drain()

    # -- settling what the client published ---------------------------------------------------

    def accept(self, did: int) -> None:
        self.accepts.append(did)
        self.conn.dirty.add(self)

    def flush_dispositions(self) -> None:
        ids = self.accepts
        if not ids or not self.open:
            ids.clear()
            return
        conn = self.conn
        first = prev = ids[0]
        for did in ids[1:]:
            if did == prev + 1:
                prev = did
                continue
            conn.send(frame_disposition(self.channel, first, prev, P.ACCEPTED))
            first = prev = did
        conn.send(frame_disposition(self.channel, first, prev, P.ACCEPTED))
        ids.clear()

    def settle_incoming(self, did: int, state: Any) -> None:
        """A non-accepted outcome for a client's transfer: sent at once, in order after accepts."""
        self.flush_dispositions()
        self.conn.send(frame_disposition(self.channel, did, did, state.encode_amqp()))

    def store_committed(self, committed: int, failed: frozenset[int]) -> None:
        pending = self.pending
        if not self.open:
            pending.clear()
        while pending and pending[0][1] <= committed:
            did, epoch = pending.popleft()
            if epoch in failed:
                self.settle_incoming(
                    did,
                    P.Rejected(error=P.error("amqp:internal-error", "message store write failed")),
                )
            else:
                self.accept(did)
        self.conn.flush_soon()
        if not pending and self.broker.store is not None:
            self.broker.store.watchers.discard(self)

    def alarm_cleared(self) -> None:
        for link in list(self.links.values()):
            if isinstance(link, ReceiverLink) and not link.detached:
                link.maybe_grant(force=True)

    # -- teardown -----------------------------------------------------------------------------

    def teardown(self) -> None:
        self.open = False
        links = list(self.links.values())
        self.links.clear()
        for link in links:
            link.teardown()
        self.senders.clear()
        self.accepts.clear()
        self.pending.clear()
        self.pending_frames.clear()
        if self.broker.store is not None:
            self.broker.store.watchers.discard(self)


def _with_consumer(m: Modified, link: SenderLink) -> Modified:
    if not m.undeliverable_here:
        return m
    try:
        return Modified(m.delivery_failed, m.undeliverable_here, m.annotations, link)  # type: ignore[call-arg]
    except TypeError:  # a core without per-consumer exclusion
        return m


def frame_disposition(channel: int, first: int, last: int, state: bytes) -> bytes:
    # role=receiver, first, last, settled=true, state
    fields = b"\x41" + _uint(first) + _uint(last) + b"\x41" + state
    body = b"\x00\x53\x15\xc0" + _pB(len(fields) + 1) + b"\x05" + fields
    return _frame_head(8 + len(body), 2, 0, channel) + body


class SenderLink:
    """The node sends a queue's messages on it: the core's Consumer for AMQP 1.0."""

    __slots__ = (
        "session",
        "conn",
        "name",
        "handle",
        "queue",
        "tag",
        "exclusive",
        "priority",
        "presettled",
        "credit",
        "delivery_count",
        "drain",
        "unsettled",
        "detached",
        "_tag_seq",
        "_transfer_pack",
        "_transfer_pre",
        "_transfer_tail",
        "_transfer_len",
    )

    def __init__(self, session: Session, a: Any, queue: QueueHandle) -> None:
        self.session = session
        self.conn = session.conn
        self.name = a.name
        self.handle = a.handle
        self.queue = queue
        self.tag = f"amqp10-{session.conn.id}-{session.channel}-{a.handle}"
        self.exclusive = False
        self.priority = 0
        self.presettled = a.snd_settle_mode == 1
        self.credit = 0
        self.delivery_count = 0
        self.drain = False
        self.unsettled = 0
        self.detached = False
        self._tag_seq = 0
        # A one-frame delivery's frame header and transfer performative in one pack: handle and
        # settled are the link's own, the delivery-id is always a 4-byte uint and the tag 4 bytes.
        fields = _uint(a.handle) + b"\x70"
        pre = b"\x00\x53\x14\xc0" + _pB(len(fields) + 4 + 6 + 2 + 1) + b"\x05" + fields
        self._transfer_pack = struct.Struct(f">IBBH{len(pre)}sI2sI2s").pack
        self._transfer_pre = pre
        self._transfer_tail = b"\x43" + (b"\x41" if self.presettled else b"\x42")
        self._transfer_len = 8 + len(pre) + 4 + 2 + 4 + 2

    def available(self) -> int | None:
        return self.queue.message_count

    # Consumer protocol.

    def can_take(self) -> bool:
        if self.credit <= 0 or self.detached:
            return False
        s = self.session
        if s.remote_incoming_window <= 0 or s.pending_frames:
            return False
        return self.conn.room()

    def backpressured(self) -> bool:
        conn = self.conn
        return conn.write_paused or conn.out_bytes > OUT_LIMIT

    def deliver(self, queue: QueueHandle, msg: Message) -> bool:
        s = self.session
        conn = self.conn
        cache = msg.amqp10
        if cache is None:
            cache = msg.amqp10 = view_of(msg)
        parts = payload_parts(cache, msg.body, msg.delivery_count, msg.annotations)
        did = s.next_delivery_id
        s.next_delivery_id = (did + 1) & MASK
        tag_seq = self._tag_seq = (self._tag_seq + 1) & MASK
        settled = self.presettled
        self.credit -= 1
        self.delivery_count = (self.delivery_count + 1) & MASK
        size = 0
        for p in parts:
            size += len(p)
        total = self._transfer_len + size
        if total <= conn.out_max_frame and s.remote_incoming_window > 0:
            parts.insert(
                0,
                self._transfer_pack(
                    total,
                    2,
                    0,
                    s.channel,
                    self._transfer_pre,
                    did,
                    b"\xa0\x04",
                    tag_seq,
                    self._transfer_tail,
                ),
            )
            conn.send(b"".join(parts))
            s.remote_incoming_window -= 1
            s.next_outgoing_id = (s.next_outgoing_id + 1) & MASK
        else:
            self._send_multi(b"".join(parts), did, _pI(tag_seq), settled)
        if settled:
            return False
        s.unsettled[did] = (queue, msg, self)
        self.unsettled += 1
        return True

    def _send_multi(self, payload: bytes, did: int, tag: bytes, settled: bool) -> None:
        s = self.session
        more_head = _transfer_head(self.handle, did, tag, settled, True)
        last_head = _transfer_head(self.handle, did, tag, settled, False)
        chunk = self.conn.out_max_frame - 8 - len(more_head)
        n = len(payload)
        pos = 0
        frames: list[bytes] = []
        while True:
            end = pos + chunk
            if end >= n:
                head = last_head
                piece = payload[pos:]
                frames.append(
                    _frame_head(8 + len(head) + len(piece), 2, 0, s.channel) + head + piece
                )
                break
            piece = payload[pos:end]
            frames.append(
                _frame_head(8 + len(more_head) + len(piece), 2, 0, s.channel) + more_head + piece
            )
            pos = end
        s.pending_frames.extend(frames)
        s._send_pending()

    def cancelled(self, queue: QueueHandle, reason: str) -> None:
        if self.detached:
            return
        self.session.detach(self, "amqp:resource-deleted", f"queue '{queue.name}' {reason}")

    # Flow control.

    def on_flow(self, f: Any) -> None:
        if f.link_credit is None:
            if f.echo:
                self.session.flow(self, echo=False)
            return
        dc = f.delivery_count if f.delivery_count is not None else 0
        credit = (dc + f.link_credit - self.delivery_count) & MASK
        self.credit = 0 if credit > 2**31 else credit
        self.drain = bool(f.drain)
        if self.credit:
            self.queue.kick()
        if not self.finish_drain() and f.echo:
            self.session.flow(self)

    def finish_drain(self) -> bool:
        """In drain mode with credit left and nothing held back by the socket: use the credit up."""
        if not self.drain or self.detached:
            return False
        if self.credit > 0:
            s = self.session
            if s.pending_frames or not self.conn.room():
                return False
            self.delivery_count = (self.delivery_count + self.credit) & MASK
            self.credit = 0
        self.drain = False
        self.session.flow(self, drain=True)
        return True

    def teardown(self) -> None:
        """Unsubscribe, and release what was delivered on this link and not settled."""
        if self.detached:
            return
        self.detached = True
        self.queue.unsubscribe(self)
        s = self.session
        if s.senders and self in s.senders:
            s.senders.remove(self)
        if self.unsettled:
            mine = [did for did, e in s.unsettled.items() if e[2] is self]
            by_queue: list[Message] = []
            for did in mine:
                _q, msg, _link = s.unsettled.pop(did)
                by_queue.append(msg)
            self.unsettled = 0
            self.queue.release_many(by_queue)


class ReceiverLink:
    """The client publishes on it; the node routes what arrives."""

    __slots__ = (
        "session",
        "conn",
        "name",
        "handle",
        "exchange",
        "key",
        "presettled",
        "credit",
        "delivery_count",
        "detached",
        "_cur_id",
        "_cur_settled",
        "_parts",
        "_size",
        "_ex_cache",
        "_route",
        "_queues",
        "_hold",
    )

    def __init__(self, session: Session, a: Any, exchange: str | None, key: str | None) -> None:
        self.session = session
        self.conn = session.conn
        self.name = a.name
        self.handle = a.handle
        self.exchange = exchange
        self.key = key
        self.presettled = a.snd_settle_mode == 1
        self.credit = 0
        self.delivery_count = a.initial_delivery_count or 0
        self.detached = False
        self._cur_id: int | None = None
        self._cur_settled = False
        self._parts: list[bytes] = []
        self._size = 0
        self._ex_cache: dict[str, Any] = {}
        # (exchange, routing key, both as 0-9-1 shortstrs) of the last message: a link's
        # messages mostly share it.
        self._route: tuple[str, str, bytes] = ("", "", b"\x00\x00")
        self._queues: list[Any] = []  # where the last message went (credit flow)
        self._hold: Any = None  # the timer of withheld credit

    def maybe_grant(self, force: bool = False) -> None:
        if self.detached or self.conn.blocked or self._hold is not None:
            return
        if force or self.credit <= PUBLISH_CREDIT // 2:
            if self.credit == PUBLISH_CREDIT:
                return
            q = self._backlogged()
            if q is not None:
                self._hold_credit(q, q.message_count, None)
                return
            self.credit = PUBLISH_CREDIT
            self.session.flow(self)

    # Credit flow: while a queue this link feeds has a backlog that its consumers are draining,
    # new credit waits until the backlog is down again, so that a publisher cannot take the
    # node's whole CPU from the consumers of what it publishes. A backlog nobody drains (no
    # consumers, or stalled ones) never holds a publisher back: the queue is then just storage.

    def _backlogged(self) -> Any:
        for q in self._queues:
            if q.message_count > HOLD_BACKLOG and q.consumer_count:
                return q
        return None

    def _hold_credit(self, q: Any, before: int, progress: float | None) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if progress is None:
            progress = loop.time()
        self._hold = loop.call_later(HOLD_RECHECK, self._recheck, q, before, progress)

    def _recheck(self, q: Any, before: int, progress: float) -> None:
        """Hold on while the backlog shrinks, or has shrunk within HOLD_PATIENCE."""
        self._hold = None
        if self.detached:
            return
        now = q.message_count
        if now > HOLD_BACKLOG and q.consumer_count and not q.deleted:
            t = asyncio.get_running_loop().time()
            if now < before:
                self._hold_credit(q, now, t)
                return
            if t - progress < HOLD_PATIENCE:
                self._hold_credit(q, before, progress)
                return
        if not self.conn.blocked and self.credit < PUBLISH_CREDIT:
            self.credit = PUBLISH_CREDIT
            self.session.flow(self)
            self.conn.flush_soon()

    def on_flow(self, f: Any) -> None:
        if f.delivery_count is not None:
            # The sender may advance its delivery count (drain): credit shrinks accordingly.
            advanced = (f.delivery_count - self.delivery_count) & MASK
            if 0 < advanced < 2**31:
                self.delivery_count = f.delivery_count
                self.credit = max(0, self.credit - advanced)
        if f.echo:
            self.session.flow(self)
        self.maybe_grant()

    def on_transfer(self, t: Any, body: bytes, off: int) -> None:
        if self._cur_id is None:
            did = t.delivery_id
            if did is not None and not t.more and not t.aborted and self.credit > 0:
                # A whole message in one frame, the usual case: no parts to gather.
                self.credit -= 1
                self.delivery_count = (self.delivery_count + 1) & MASK
                if len(body) - off > self.conn.settings.max_message_size:
                    raise LinkError10(
                        "amqp:link:message-size-exceeded",
                        "message larger than max-message-size "
                        f"{self.conn.settings.max_message_size}",
                    )
                self._publish(did, bool(t.settled) or self.presettled, body[off:])
                self.maybe_grant()
                return
            if t.delivery_id is None:
                raise LinkError10(
                    "amqp:invalid-field", "first transfer of a delivery without a delivery-id"
                )
            if self.credit <= 0:
                raise LinkError10(
                    "amqp:link:transfer-limit-exceeded", "transfer without link credit"
                )
            self.credit -= 1
            self.delivery_count = (self.delivery_count + 1) & MASK
            self._cur_id = t.delivery_id
            self._cur_settled = bool(t.settled)
        elif t.delivery_id is not None and t.delivery_id != self._cur_id:
            raise LinkError10(
                "amqp:invalid-field", "continuation transfer with a different delivery-id"
            )
        elif t.settled:
            self._cur_settled = True
        if t.aborted:
            self._reset()
            self.maybe_grant()
            return
        n = len(body) - off
        if n:
            self._size += n
            if self._size > self.conn.settings.max_message_size:
                self._reset()
                raise LinkError10(
                    "amqp:link:message-size-exceeded",
                    f"message larger than max-message-size {self.conn.settings.max_message_size}",
                )
            self._parts.append(body[off:] if off else body)
        if t.more:
            return
        did = self._cur_id
        settled = self._cur_settled or self.presettled
        parts = self._parts
        payload = parts[0] if len(parts) == 1 else b"".join(parts)
        self._reset()
        self._publish(did, settled, payload)
        self.maybe_grant()

    def _reset(self) -> None:
        self._cur_id = None
        self._cur_settled = False
        self._parts = []
        self._size = 0

    def _reject(self, did: int, settled: bool, condition: str, description: str) -> None:
        if not settled:
            self.session.settle_incoming(did, P.Rejected(error=P.error(condition, description)))

    def _publish(self, did: int, settled: bool, payload: bytes) -> None:
        session = self.session
        conn = self.conn
        broker = conn.broker
        try:
            conv = convert(payload)
        except DecodeError as e:
            self._reject(did, settled, "amqp:decode-error", f"malformed message: {e}")
            return
        exchange = self.exchange
        key = self.key
        if exchange is None:
            to = conv.to
            if not isinstance(to, str):
                self._reject(
                    did,
                    settled,
                    "amqp:precondition-failed",
                    "message without a 'to' address on an anonymous link",
                )
                return
            try:
                exchange, key = parse_target(to)
            except BadAddress as e:
                self._reject(did, settled, "amqp:invalid-field", f"bad 'to' address '{to}': {e}")
                return
        if key is None:
            subject = conv.subject
            key = subject if isinstance(subject, str) else ""
        route = self._route
        if route[1] != key and len(key.encode("utf-8")) > 255:
            self._reject(did, settled, "amqp:invalid-field", "routing key longer than 255 bytes")
            return
        vhost = conn.vhost
        ex = self._ex_cache.get(exchange)
        if ex is None or broker.state.exchange(vhost, exchange) is not ex:
            ex = broker.state.exchange(vhost, exchange)
            if ex is None:
                if self.exchange is None:
                    self._reject(
                        did,
                        settled,
                        "amqp:not-found",
                        f"no exchange '{exchange}' in vhost '{vhost}'",
                    )
                    return
                raise LinkError10("amqp:not-found", f"no exchange '{exchange}' in vhost '{vhost}'")
            try:
                broker.check(conn.user, vhost, "write", "exchange", exchange)
            except MetadataError as e:
                if self.exchange is None:
                    self._reject(did, settled, "amqp:unauthorized-access", e.text)
                    return
                raise LinkError10("amqp:unauthorized-access", e.text)
            if ex.internal:
                self._reject(
                    did,
                    settled,
                    "amqp:unauthorized-access",
                    f"cannot publish to internal exchange '{exchange}'",
                )
                return
            if len(self._ex_cache) > 64:
                self._ex_cache.clear()
            self._ex_cache[exchange] = ex
        uid = conv.user_id
        if isinstance(uid, bytes) and uid != conn.user.encode("utf-8"):
            self._reject(
                did,
                settled,
                "amqp:precondition-failed",
                f"user-id property set to '{uid.decode('utf-8', 'replace')}' but authenticated user was '{conn.user}'",
            )
            return
        if route[0] != exchange or route[1] != key:
            route = self._route = (exchange, key, encode_shortstr(exchange) + encode_shortstr(key))
        msg = Message(exchange, key, route[2], conv.props_raw, conv.body, AMQP10)
        msg.publisher = conn
        msg.amqp10 = conv.cache
        epoch, self._queues = broker.publish(vhost, ex, msg, not settled, conn)
        if settled:
            return
        if epoch < 0:
            if epoch == UNROUTED:
                session.settle_incoming(did, P.Released())
            else:  # x-overflow reject-publish
                session.settle_incoming(
                    did,
                    P.Rejected(
                        error=P.error("amqp:resource-limit-exceeded", "queue is full (x-overflow)")
                    ),
                )
            return
        if epoch or session.pending:
            session.pending.append((did, epoch))
            if epoch:
                broker.store.watchers.add(session)
        else:
            session.accept(did)

    def teardown(self) -> None:
        self.detached = True
        self._reset()
        self._queues = []
        if self._hold is not None:
            self._hold.cancel()
            self._hold = None
