"""Consuming and settlement: basic.qos/consume/cancel/get, ack/nack/reject/recover, Consumer091.

Delivery is the hot path: `Consumer091.deliver` renders straight to the connection's buffer.
See channel.py for how deliveries and settlements map to the core's outcomes.
"""

from __future__ import annotations

import secrets
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..core.message import Message
from ..core.outcome import ACCEPTED, MODIFIED, REJECTED, RELEASED, Modified
from ..core.queue import QueueHandle
from ..core.reply_to import PSEUDO_QUEUE as REPLY_TO
from ..wire.table import as_int, encode_shortstr
from . import render, spec
from .channel_base import (
    OUT_LIMIT,
    ChannelCore,
    ChannelError,
    ConnectionError091,
    _settled,
)
from .constants import ACCESS_REFUSED, NOT_ALLOWED, NOT_IMPLEMENTED, PRECONDITION_FAILED

if TYPE_CHECKING:
    from .channel import Channel

# How a quorum queue's 0-9-1 requeues settle: a failed delivery, counted toward its limit.
FAILED = Modified(delivery_failed=True)

# The acknowledgement timeout (RabbitMQ's consumer_timeout) is checked periodically, never per
# delivery: a check a quarter of the timeout apart finds a delivery out between T and 1.5 T after
# it went out (see `ack_timeout_check`), but never more than a minute apart (RabbitMQ checks once
# a minute) nor more often than every 0.1 s (x-consumer-timeout 0).
CHECK_MAX = 60.0
CHECK_MIN = 0.1
# Tag marks a channel keeps at most; beyond, every other one goes (which only makes the check
# later, never earlier). They pile up only while the oldest delivery is under no timeout.
MAX_MARKS = 64


def check_period(timeout_ms: int | None) -> float:
    """Seconds between acknowledgement timeout checks for a timeout of `timeout_ms` (None: none
    applies now, but a policy may set one later)."""
    if timeout_ms is None:
        return CHECK_MAX
    return min(CHECK_MAX, max(CHECK_MIN, timeout_ms / 4000))


class Consumer091:
    """A basic.consume subscription; the core's `Consumer` for 0-9-1."""

    __slots__ = (
        "channel",
        "tag",
        "ctag_raw",
        "queue",
        "no_ack",
        "exclusive",
        "prefetch",
        "unacked",
        "arguments",
        "priority",
    )

    def __init__(
        self,
        channel: Channel,
        tag: str,
        queue: QueueHandle,
        no_ack: bool,
        exclusive: bool,
        prefetch: int,
        arguments: dict[str, Any],
    ) -> None:
        self.channel = channel
        self.tag = tag
        self.ctag_raw = encode_shortstr(tag)
        self.queue = queue
        self.no_ack = no_ack
        self.exclusive = exclusive
        self.prefetch = prefetch
        self.unacked = 0
        self.arguments = arguments
        self.priority = as_int(arguments.get("x-priority", 0)) or 0

    def can_take(self) -> bool:
        ch = self.channel
        conn = ch.conn
        if conn.write_paused or conn.out_bytes > OUT_LIMIT:
            conn.starved = True
            return False
        if not ch.active:
            return False
        if self.no_ack:
            return True
        if self.prefetch and self.unacked >= self.prefetch:
            return False
        return not (ch.global_prefetch and len(ch.unacked) >= ch.global_prefetch)

    def deliver(self, queue: QueueHandle, msg: Message) -> bool:
        ch = self.channel
        conn = ch.conn
        counters = ch.counters
        props = msg.props_raw
        if msg.redelivered:
            counters.redelivered += 1
            if msg.delivery_count and queue.counts_requeues:
                props = msg.props_with_delivery_count()
        if self.no_ack:
            counters.delivered_autoack += 1
            conn.send(
                render.deliver(
                    ch.number,
                    self.ctag_raw,
                    ch.next_tag(),
                    msg.redelivered,
                    msg.route_raw,
                    props,
                    msg.body,
                    conn.frame_max,
                )
            )
            return False
        counters.delivered_ack += 1
        ch.delivery_tag = tag = ch.delivery_tag + 1
        ch.unacked[tag] = (queue, msg, self)
        self.unacked += 1
        conn.send(
            render.deliver(
                ch.number,
                self.ctag_raw,
                tag,
                msg.redelivered,
                msg.route_raw,
                props,
                msg.body,
                conn.frame_max,
            )
        )
        return True

    def backpressured(self) -> bool:
        conn = self.channel.conn
        return conn.write_paused or conn.out_bytes > OUT_LIMIT

    def cancelled(self, queue: QueueHandle, reason: str) -> None:
        ch = self.channel
        if ch.consumers.pop(self.tag, None) is None:
            return
        if ch.deleting_queue == queue.name:
            # RabbitMQ answers queue.delete-ok before it cancels the deleting channel's own
            # consumers; py-amqp and amqplib wait for the delete-ok and trip over the cancel.
            ch.held_cancels.append(self.tag)
            return
        ch.notify_cancelled(self.tag)


class ConsumeMixin(ChannelCore):
    """basic.qos/consume/cancel/get and the settlements for `Channel`."""

    def notify_cancelled(self, tag: str) -> None:
        """Tell a client that asked for it (consumer_cancel_notify) that the node cancelled a
        consumer of its own (queue deleted, node down)."""
        if self.conn.capabilities.get("consumer_cancel_notify") and self.is_open:
            self.send_method(spec.BasicCancel(consumer_tag=tag, nowait=True))

    # -- basic: consumers ---------------------------------------------------------------------

    def _basic_qos(self, m: Any) -> None:
        if m.prefetch_size:
            raise ConnectionError091(NOT_IMPLEMENTED, f"prefetch_size!=0 ({m.prefetch_size})")
        if m.global_:
            self.global_prefetch = m.prefetch_count
        else:
            self.consumer_prefetch = m.prefetch_count
        self.send_method(spec.BasicQosOk())
        self.kick_consumers()

    def _basic_consume(self, m: Any) -> None:
        if m.queue == REPLY_TO:
            self._consume_replies(m)
            return
        name = self._queue_name(m.queue)
        q = self._existing_queue(name)
        self.broker.check(self.user, self.vhost, "read", "queue", name)
        tag = m.consumer_tag or "amq.ctag-" + secrets.token_urlsafe(16)
        if tag in self.consumers:
            raise ConnectionError091(NOT_ALLOWED, f"attempt to reuse consumer tag '{tag}'")
        # For a queue on another node this sees the consumers through this node; its leader
        # checks the rest when the subscription reaches it.
        if q.has_exclusive_consumer() or (m.exclusive and q.consumer_count):
            raise ChannelError(
                ACCESS_REFUSED, f"queue '{name}' in vhost '{self.vhost}' in exclusive use"
            )
        args = m.arguments or {}
        prio = args.get("x-priority")
        if prio is not None and as_int(prio) is None:
            raise ChannelError(
                PRECONDITION_FAILED,
                f"invalid arg 'x-priority' for consumer '{tag}': expected an integer",
            )
        consumer = Consumer091(self, tag, q, m.no_ack, m.exclusive, self.consumer_prefetch, args)
        self.consumers[tag] = consumer
        if not m.nowait:
            self.send_method(spec.BasicConsumeOk(consumer_tag=tag))
        if not m.no_ack:
            self.conn.watch_acks(q)
        q.subscribe(consumer)

    def _consume_replies(self, m: Any) -> None:
        """Direct reply-to (node.core.reply_to): this channel's reply consumer."""
        if not m.no_ack:
            raise ChannelError(PRECONDITION_FAILED, "reply consumer cannot acknowledge", 60, 20)
        if self.reply_to is not None:
            raise ChannelError(PRECONDITION_FAILED, "reply consumer already set", 60, 20)
        tag = m.consumer_tag or "amq.ctag-" + secrets.token_urlsafe(16)
        if tag in self.consumers:
            raise ConnectionError091(NOT_ALLOWED, f"attempt to reuse consumer tag '{tag}'")
        q = self.reply_to = self.broker.open_reply_to(self.vhost)
        consumer = Consumer091(self, tag, q, True, False, 0, m.arguments or {})
        self.consumers[tag] = consumer
        if not m.nowait:
            self.send_method(spec.BasicConsumeOk(consumer_tag=tag))
        q.subscribe(consumer)

    def _basic_cancel(self, m: Any) -> None:
        consumer = self.consumers.pop(m.consumer_tag, None)
        deleting = None
        if consumer is not None:
            # Its unacked deliveries stay on the channel and can still be acked, as in RabbitMQ;
            # they are released when the channel closes.
            consumer.queue.unsubscribe(consumer)
            deleting = consumer.queue.deleting
            if consumer.queue is self.reply_to:
                self.reply_to = None
        if m.nowait:
            return
        ok = spec.BasicCancelOk(consumer_tag=m.consumer_tag)
        if deleting is not None and not deleting.done():
            # An auto-delete queue lost its last consumer: reply once it is gone.
            self._await(_settled(deleting), lambda _: self.send_method(ok), m)
        else:
            self.send_method(ok)

    def kick_consumers(self) -> None:
        seen: set[int] = set()
        for c in list(self.consumers.values()):
            if id(c.queue) not in seen:
                seen.add(id(c.queue))
                c.queue.kick()

    def _basic_get(self, m: Any) -> None:
        name = self._queue_name(m.queue)
        q = self._existing_queue(name)
        self.broker.check(self.user, self.vhost, "read", "queue", name)
        self._await(q.get(not m.no_ack), lambda r: self._got(q, m, r[0], r[1]), m)

    def _got(self, q: QueueHandle, m: Any, msg: Message | None, remaining: int) -> None:
        if msg is None:
            self.counters.get_empty += 1
            self.send_method(spec.BasicGetEmpty())
            return
        tag = self.next_tag()
        props = msg.props_raw
        if msg.redelivered:
            self.counters.redelivered += 1
            if msg.delivery_count and q.counts_requeues:
                props = msg.props_with_delivery_count()
        if not m.no_ack:
            self.counters.get_ack += 1
            self.unacked[tag] = (q, msg, None)
            if len(self.unacked) == 1:
                # The channel's oldest delivery now, the one its timeout check looks at (while
                # there were others, the check was already due).
                self.conn.watch_acks(q)
        else:
            self.counters.get_autoack += 1
        self.conn.send(
            render.get_ok(
                self.number,
                tag,
                msg.redelivered,
                msg.route_raw,
                remaining,
                props,
                msg.body,
                self.conn.frame_max,
            )
        )

    # -- basic: settlement --------------------------------------------------------------------

    def _take(
        self, tag: int, multiple: bool
    ) -> list[tuple[QueueHandle, Message, Consumer091 | None]]:
        unacked = self.unacked
        if multiple:
            if tag == 0:
                taken = list(unacked.values())
                unacked.clear()
                return taken
            if tag not in unacked and (not unacked or tag < next(iter(unacked))):
                raise ChannelError(PRECONDITION_FAILED, f"unknown delivery tag {tag}")
            keys = []
            for t in unacked:
                if t > tag:
                    break
                keys.append(t)
            return [unacked.pop(t) for t in keys]
        entry = unacked.pop(tag, None)
        if entry is None:
            raise ChannelError(PRECONDITION_FAILED, f"unknown delivery tag {tag}")
        return [entry]

    def _settle(self, entries: list, outcome: Any) -> None:
        kick = False
        for q, msg, consumer in entries:
            if consumer is not None:
                consumer.unacked -= 1
                kick = True
            if outcome is RELEASED:
                self._requeue(q, msg)
            else:
                q.settle(msg, outcome)
        if kick:
            self.kick_consumers()

    def _defer(self, tag: int, multiple: bool, outcome: Any) -> None:
        """In a transaction: check the tag now, settle at commit, forget at rollback."""
        if tag not in self.unacked and not (
            multiple and (tag == 0 or (self.unacked and tag > next(iter(self.unacked))))
        ):
            raise ChannelError(PRECONDITION_FAILED, f"unknown delivery tag {tag}")
        self.tx.append(lambda: self._settle(self._take(tag, multiple), outcome))  # type: ignore[union-attr]

    def _basic_ack(self, m: Any) -> None:
        if self.tx is not None:
            self._defer(m.delivery_tag, m.multiple, ACCEPTED)
            return
        unacked = self.unacked
        if not m.multiple:
            entry = unacked.pop(m.delivery_tag, None)
            if entry is None:
                raise ChannelError(PRECONDITION_FAILED, f"unknown delivery tag {m.delivery_tag}")
            q, msg, consumer = entry
            self.counters.acked += 1
            q.settle(msg, ACCEPTED)
            if consumer is not None:
                consumer.unacked -= 1
                consumer.queue.kick()
                if self.global_prefetch:
                    self.kick_consumers()
            return
        entries = self._take(m.delivery_tag, True)
        self.counters.acked += len(entries)
        self._settle(entries, ACCEPTED)

    def _basic_reject(self, m: Any) -> None:
        self._reject(m.delivery_tag, False, m.requeue)

    def _basic_nack(self, m: Any) -> None:
        self._reject(m.delivery_tag, m.multiple, m.requeue)

    def _reject(self, tag: int, multiple: bool, requeue: bool) -> None:
        outcome = RELEASED if requeue else REJECTED
        if self.tx is not None:
            self._defer(tag, multiple, outcome)
            return
        self._settle(self._take(tag, multiple), outcome)

    def _requeue(self, q: Any, msg: Any) -> None:
        """basic.reject/nack requeue=true: released, except that a quorum queue counts it as a
        failed delivery (RabbitMQ 4), so its delivery limit ends a poison-message loop."""
        if q.counts_requeues:
            q.settle(msg, MODIFIED, FAILED)
        else:
            q.settle(msg, RELEASED)

    def _recover(self, requeue: bool) -> None:
        if requeue:
            self.release_all()
            self.kick_consumers()
            return
        # requeue=false: redeliver each to its original consumer, marked redelivered, new tags.
        entries = list(self.unacked.items())
        self.unacked.clear()
        for _tag, (q, msg, consumer) in entries:
            if consumer is None or consumer.tag not in self.consumers:
                q.settle(msg, RELEASED)
                continue
            msg.redelivered = True
            consumer.unacked -= 1
            tag = self.next_tag()
            self.unacked[tag] = (q, msg, consumer)
            consumer.unacked += 1
            props = msg.props_raw
            if msg.delivery_count and q.counts_requeues:
                props = msg.props_with_delivery_count()
            self.conn.send(
                render.deliver(
                    self.number,
                    consumer.ctag_raw,
                    tag,
                    True,
                    msg.route_raw,
                    props,
                    msg.body,
                    self.conn.frame_max,
                )
            )

    def _basic_recover_async(self, m: Any) -> None:
        self._recover(m.requeue)

    def _basic_recover(self, m: Any) -> None:
        self._recover(m.requeue)
        self.send_method(spec.BasicRecoverOk())

    # -- acknowledgement timeout ---------------------------------------------------------------

    def ack_timeout_check(
        self, now: float, timeout_of: Callable[[QueueHandle], int | None]
    ) -> int | None:
        """The timeout (ms) the channel's oldest unacknowledged delivery has run out of, else None.
        The connection calls it periodically (`Connection091.check_acks`) with a monotonic `now`.

        As RabbitMQ's channel, only the oldest delivery is looked at, against its own queue's
        timeout (`timeout_of`): deliveries are settled mostly in order, and the one that is not
        stays the oldest until it is. No delivery carries a timestamp: each check records a mark
        (the channel's last delivery tag, now), so every tag at or below a mark's went out at or
        before its time. The oldest delivery's age is at least now minus the time of the first
        mark at or above its tag, and it is found out once that lower bound reaches the timeout:
        never early, and at most two check periods late (the mark comes up to one period after
        the delivery, the check up to one period after the timeout)."""
        unacked = self.unacked
        marks = self.ack_marks
        if not unacked:
            marks.clear()
            return None
        last = self.delivery_tag
        if not marks or marks[-1][0] != last:
            marks.append((last, now))
        head = next(iter(unacked))
        # Marks below the oldest delivery's tag name deliveries all settled since; the last
        # mark is the channel's last tag, never below it, so one always remains.
        while marks[0][0] < head:
            marks.popleft()
        timeout = timeout_of(unacked[head][0])
        if timeout is not None and (now - marks[0][1]) * 1000 >= timeout:
            return timeout
        if len(marks) > MAX_MARKS:
            kept = list(marks)[::2]
            if kept[-1] is not marks[-1]:
                kept.append(marks[-1])
            self.ack_marks = deque(kept)
        return None

    def release_all(self) -> None:
        """Release every unacked delivery back to its queue, in delivery order (the channel
        closing, basic.recover with requeue). A quorum queue counts each as a failed delivery,
        as RabbitMQ's does when a consumer's channel goes down (rabbit_fifo returns a down
        consumer's messages with delivery-failed): a consumer that dies on a poison message
        reaches the delivery limit too."""
        if not self.unacked:
            return
        by_queue: dict[int, tuple[QueueHandle, list[Message]]] = {}
        for q, msg, consumer in self.unacked.values():
            if consumer is not None:
                consumer.unacked -= 1
            by_queue.setdefault(id(q), (q, []))[1].append(msg)
        self.unacked.clear()
        for q, msgs in by_queue.values():
            if q.counts_requeues:
                for msg in msgs:
                    q.settle(msg, MODIFIED, FAILED)
            else:
                q.release_many(msgs)
