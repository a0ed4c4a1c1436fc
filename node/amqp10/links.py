"""AMQP 1.0 links, mapped onto the broker core.

`SenderLink` is a link on which the node sends: it is the core's `Consumer` of one queue, with
link credit instead of prefetch. `ReceiverLink` is a link on which the client publishes: the node
grants credit, assembles multi-frame transfers, converts the message (node.amqp10.message), routes
it, and settles it with accepted (after the store commit for persistent messages to durable
queues), released (unroutable) or rejected.

Links are attached, flowed and detached by their session (node.amqp10.session), which also keeps
the delivery-ids and settles what they deliver or receive; addresses are parsed in
node.amqp10.addresses. This is the per-message path: keep it free of extra call layers.
"""

from __future__ import annotations

import asyncio
import struct
from typing import TYPE_CHECKING, Any

from ..core.message import AMQP10, Message
from ..core.publish import UNROUTED
from ..core.queue import QueueHandle
from ..metadata.state import MetadataError
from ..wire.table import encode_shortstr
from . import performatives as P
from .addresses import BadAddress, parse_target
from .codec import DecodeError
from .errors import LinkError10
from .message import convert, payload_parts, view_of

if TYPE_CHECKING:
    from .session import Session

# Deliveries stop once this many bytes wait for the socket (as 0-9-1's channel.OUT_LIMIT).
OUT_LIMIT = 256 * 1024
# Link credit granted to publishers, topped up when half is used.
PUBLISH_CREDIT = 1000
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
        if epoch and epoch <= broker.store.committed:
            # Resolved already (a replica that stopped leading refuses at once): watchers only
            # hear of a failure when it happens, so look it up.
            if broker.store.did_fail(epoch):
                error = broker.store.ledger.last_error or "the queue did not take the message"
                session.settle_incoming(
                    did, P.Rejected(error=P.error("amqp:internal-error", error))
                )
                return
            epoch = 0
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
