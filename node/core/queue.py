"""Queues: the `QueueHandle` seam and `LocalQueue`, a queue whose messages live on this node.

Theory of operation: a queue holds ready messages in arrival order and a set of consumers, each of
which says whether it can take a message now (`can_take`: prefetch/credit, flow, a full socket).
`enqueue` hands a message straight to a consumer with room when nothing is waiting — the common case
of a keeping-up consumer costs no queueing at all — else appends it. Whenever room may have appeared
(a settlement, a new consumer, a socket drained) the front end calls `kick`, which deals ready
messages round-robin to consumers with room.

Settlement follows the core's outcome vocabulary (`node.core.outcome`). Released messages go back to
their original position: every message gets a per-queue sequence number, and released ones wait in
a heap keyed by it, ahead of everything never delivered (which is necessarily younger).
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from ..wire.properties import FLAG_EXPIRATION, flags_of
from .message import Message
from .outcome import Modified, Outcome
from .queue_args import QueueOptions, parse
from .ready import FifoReady, PriorityReady

# Flow control: a queue whose consumers are held back by their connections' output (not by their
# prefetch) and whose backlog passes FLOW_HIGH stops its publishers' reading until it is back under
# FLOW_LOW. This is RabbitMQ's credit flow in spirit: publishers slow to the rate deliveries leave,
# instead of the node spending its CPU accepting messages it cannot hand on.
FLOW_HIGH = 2000
FLOW_LOW = 500

# Paging: below PAGE_LOW ready messages in memory, the next PAGE_SIZE are read back from the store.
PAGE_LOW = 2000
PAGE_SIZE = 4000
# What a message in memory costs beyond its body (objects, headers), for the memory budget.
MESSAGE_OVERHEAD = 400


class MemoryBudget:
    """Bytes of message data this node keeps in memory, and the limit beyond which it pages."""

    __slots__ = ("limit", "used")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0


class Consumer(Protocol):
    tag: str
    exclusive: bool
    priority: int  # x-priority: higher levels are served first while they have room

    def can_take(self) -> bool:
        """True when this consumer has room for one more delivery now."""

    def deliver(self, queue: QueueHandle, msg: Message) -> bool:
        """Send `msg`; True when the delivery awaits settlement (False for at-most-once)."""

    def cancelled(self, queue: QueueHandle, reason: str) -> None:
        """The queue went away (deleted): the consumer is no longer subscribed."""

    def backpressured(self) -> bool:
        """True when only the consumer's connection output (not its prefetch) holds it back."""


class FlowControlled(Protocol):
    """A publisher that a congested queue can pause and resume."""

    def flow_blocked(self, queue: object) -> None: ...

    def flow_unblocked(self, queue: object) -> None: ...


class QueueHandle(Protocol):
    """A queue as the front ends, the router and the cluster use it, wherever it lives.

    LocalQueue (this node leads it) and cluster.forwarding's RemoteQueue (another node does)
    implement it; a caller never asks which one it holds. What only the leader can answer
    (`get`, `purge`, `stats`) returns a future: done at once for a local queue, resolved by the
    leader's answer for a remote one, so a caller continues at once when it can and waits when
    it must (the 0-9-1 channel keeps later frames in order meanwhile). The rest is synchronous:
    enqueue returns a store token (or a ledger token resolved by the leader's confirm).
    """

    vhost: str
    name: str
    leader: str  # the node that leads it
    # A quorum queue: a 0-9-1 requeue (or a channel closing on a delivery) is a failed
    # delivery, and a 0-9-1 redelivery carries x-delivery-count (docs/architecture.md).
    counts_requeues: bool
    led_here: bool  # this node leads it: its messages are here
    deleted: bool
    congested: bool  # its publishers should pause (block_publisher) until it drains
    deleting: asyncio.Future | None  # an auto-delete queue's pending delete, once proposed
    unacked: int  # deliveries made here and not settled yet

    @property
    def message_count(self) -> int:
        """Ready messages, as this node knows now (for a remote queue: its last answer)."""

    @property
    def consumer_count(self) -> int:
        """Consumers subscribed through this handle (for a local queue: all of them)."""

    @property
    def consumers(self) -> list[Consumer]: ...

    def enqueue(self, msg: Message, confirm: bool = True) -> int:
        """Take `msg`: a store token its confirm waits for (0 = at once), or REJECTED. With
        confirm=False the caller will not wait for that token (no confirm, no transaction)."""

    def block_publisher(self, publisher: FlowControlled) -> None:
        """Pause `publisher` until the queue is no longer congested."""

    def subscribe(self, consumer: Consumer) -> None: ...

    def unsubscribe(self, consumer: Consumer) -> None: ...

    def has_exclusive_consumer(self) -> bool: ...

    def kick(self) -> None:
        """Room may have appeared at a consumer: deliver what it can take."""

    def settle(self, msg: Message, outcome: Outcome, modified: Modified | None = None) -> None: ...

    def release_many(self, msgs: list[Message]) -> None:
        """Release several deliveries at once (a channel closing), in delivery order."""

    def settle_earlier(
        self, seqs: list[int], outcome: Outcome, modified: Modified | None = None
    ) -> None:
        """Settle, by seq, deliveries an earlier leader of this replicated queue made."""

    def get(self, ack_required: bool) -> asyncio.Future:
        """basic.get: a future of (message or None, messages left)."""

    def purge(self) -> asyncio.Future:
        """A future of the number of messages purged."""

    def stats(self) -> asyncio.Future:
        """A future of (messages ready, consumers) as the leader knows them."""

    def touch(self) -> None:
        """The queue was used (declared, basic.get): restart its x-expires clock."""

    def configure(self, options: QueueOptions) -> None:
        """A policy changed its options (the leader applies them; other handles ignore it)."""

    def delete(self, reason: str) -> int:
        """The queue is gone here: cancel its consumers (the leader drops its messages too)."""


def resolved(value: Any) -> asyncio.Future:
    """A future already holding `value` (what a local queue answers where a remote one waits)."""
    fut = asyncio.get_running_loop().create_future()
    fut.set_result(value)
    return fut


class LocalQueue:
    """A queue led by this node: memory + store (see the module docstring)."""

    led_here = True

    def __init__(
        self,
        vhost: str,
        name: str,
        durable: bool = False,
        exclusive_owner: str | None = None,
        auto_delete: bool = False,
        arguments: dict[str, Any] | None = None,
        store: Any = None,
        budget: MemoryBudget | None = None,
        options: QueueOptions | None = None,
        leader: str = "",
    ) -> None:
        self.vhost = vhost
        self.name = name
        self.leader = leader
        self.durable = durable
        self.exclusive_owner = exclusive_owner
        self.auto_delete = auto_delete
        self.arguments = arguments or {}
        self._seq = 0
        self._consumers: deque[Consumer] = deque()
        self.unacked = 0
        self.deleted = False
        self.had_consumers = False
        # Consumers grouped by priority, highest first; None while all share one priority.
        self._levels: list[deque[Consumer]] | None = None
        # Called when an auto-delete queue loses its last consumer, or an x-expires queue expires.
        self.on_unused: Callable[[LocalQueue], None] | None = None
        # Told after a purge (the broker passes it on to a handover still bringing messages).
        self.on_purged: Callable[[LocalQueue], None] | None = None
        # Called with a message leaving for a dead-letter exchange: (queue, message, reason).
        self.dead_letter: Callable[[LocalQueue, Message, str], None] | None = None
        self._dispatching = False
        self.congested = False
        self._blocked: set[FlowControlled] = set()
        # Persistence and paging (node.store.SQLiteStore); None keeps everything in memory.
        # A replicated queue's store is its replica's log (cluster.replication), which keeps
        # every message, persistent or not (as RabbitMQ's quorum queues do).
        self.store = store
        self.store_all = bool(getattr(store, "keeps_every_message", False))
        # The store can fall behind and say so (SQLiteStore.backlogged): credit flow on it.
        self._store_flow = hasattr(store, "when_drained")
        self._waiting_store = False
        self.qid = store.queue_id(vhost, name, durable) if store is not None else 0
        self.budget = budget
        self._paged = 0  # messages only in the store, all younger than anything in memory
        self._paged_bytes = 0
        self._cursor = 0  # highest seq held in memory or paged in: the next page starts after it
        self._paging_in = False
        self._delivered_before = (
            0  # after recovery: seqs up to this were delivered before the crash
        )
        self.deleting: Any = None  # the pending delete of an auto-delete queue (a future)
        # Leadership moved away: the cluster.handover.Handover that owns what is left.
        self.handover: Any = None
        # A replicated queue's handle that took over from this one (its new leader): where the
        # settlements of this one's deliveries go (`settle_earlier`).
        self.successor: Any = None
        # Seqs an earlier leader's delivery settled (accepted) while this one had delivered them
        # again: their second delivery settles as accepted whatever its outcome.
        self._settled_early: set[int] = set()
        self._ready_by_seq: dict[int, Message] | None = None  # for settle_earlier, for a while
        self._held_back: dict[int, Message] = {}  # see hold_back
        self._held_back_bytes = 0
        # A replicated queue's leader: how long deliveries to a consumer on another node whose
        # stream broke wait before they go again (release_later).
        self.release_delay = 0.0
        # Queue features (TTL, limits, priorities, single active consumer, delivery limit).
        self._ready: FifoReady | PriorityReady = FifoReady()
        self._ready_bytes = 0
        self._expiry: list[tuple[float, int, Message]] = []
        self._expiry_timer: Any = None
        self._unused_timer: Any = None
        self.configure(options or parse(self.arguments))

    def configure(self, options: QueueOptions) -> None:
        """Apply options (at creation, and again when a policy changes)."""
        self.options = options
        self.counts_requeues = options.quorum
        self._features = bool(
            options.message_ttl is not None or options.limited or options.delivery_limit is not None
        )
        self._sac = options.single_active_consumer
        if options.max_priority and not isinstance(self._ready, PriorityReady):
            old = list(self._ready)
            self._ready = PriorityReady(options.max_priority)
            for m in old:
                self._ready.append(m)
        self._arm_unused()
        if options.limited:
            self._enforce_limits()

    # -- publishing ---------------------------------------------------------------------------

    def enqueue(self, msg: Message, confirm: bool = True) -> int:
        """Take a message: 0 when it is safe now, a store epoch when that commit makes it safe,
        REJECTED when the queue refuses it (x-overflow reject-publish)."""
        if self._features and self.options.limited and self.options.overflow != "drop-head":
            if self._full_for(msg):
                if self.options.overflow == "reject-publish-dlx" and self.dead_letter is not None:
                    self.dead_letter(self, msg, "maxlen")
                return REJECTED
        self._seq += 1
        seq = msg.seq = self._seq
        epoch = 0
        store = self.store
        if self._features or (msg.props_raw and msg.props_raw[0] & 1):  # 0x0100: expiration
            self._set_expiry(msg)
        if store is not None and (self.store_all or (self.durable and msg.persistent)):
            epoch = store.append(
                self.qid, seq, False, msg.route_raw, msg.props_raw, msg.body, msg.expires
            )
            msg.stored = True
            if self._store_flow and store.backlogged and not self.congested:
                self._store_behind()
        consumers = self._consumers
        if consumers and not self._ready and not self._paged:
            c = consumers[0] if len(consumers) == 1 and self._levels is None else self._pick()
            if c is not None and c.can_take():
                self._hand(c, msg)
                return epoch
        if msg.expires and msg.expires <= _now():
            # x-message-ttl 0 (or an expiration already past): only an immediate delivery counts.
            self._expire(msg)
            return epoch
        budget = self.budget
        if (
            store is not None
            and budget is not None
            and (self._paged or budget.used > budget.limit)
            and not isinstance(self._ready, PriorityReady)
        ):
            # Over the memory budget: the message lives only in the store until paged back in.
            if not msg.stored:
                store.append(
                    self.qid, seq, True, msg.route_raw, msg.props_raw, msg.body, msg.expires
                )
                if self._store_flow and store.backlogged and not self.congested:
                    self._store_behind()
            self._paged += 1
            self._paged_bytes += len(msg.body)
        else:
            msg.queued = True
            self._ready.append(msg)
            self._ready_bytes += len(msg.body)
            self._cursor = seq
            if budget is not None:
                budget.used += len(msg.body) + MESSAGE_OVERHEAD
            if msg.expires:
                self._watch_expiry(msg)
        if self._features and self.options.limited:
            self._enforce_limits()
        # Checked every 64 messages past the mark: asking every consumer on every enqueue
        # showed up in profiles of deep queues.
        if consumers and len(self._ready) > FLOW_HIGH and not self.congested and not self._seq & 63:
            self.congested = any(c.backpressured() for c in consumers)
        return epoch

    def _hand(self, c: Consumer, msg: Message) -> None:
        """Deliver to `c`; an at-most-once delivery settles the message there and then."""
        if c.deliver(self, msg):
            self.unacked += 1
            if msg.stored:
                self.store.mark_delivered(self.qid, msg.seq)
            if msg.seq > self._cursor:
                self._cursor = msg.seq
                if self.budget is not None:
                    self.budget.used += len(msg.body) + MESSAGE_OVERHEAD
        else:
            if msg.seq > self._cursor:
                self._cursor = msg.seq
            else:
                self._forget(msg)
            if msg.stored:
                self.store.delete(self.qid, msg.seq)

    def _forget(self, msg: Message) -> None:
        if self.budget is not None:
            self.budget.used -= len(msg.body) + MESSAGE_OVERHEAD

    def _pop(self) -> Message | None:
        """The next ready message, with expired ones dropped or dead-lettered on the way."""
        while True:
            msg = self._ready.pop()
            if msg is None:
                return None
            msg.queued = False
            self._ready_bytes -= len(msg.body)
            if msg.expires and msg.expires <= _now():
                self._expire(msg)
                continue
            return msg

    def block_publisher(self, publisher: FlowControlled) -> None:
        if publisher not in self._blocked:
            self._blocked.add(publisher)
            publisher.flow_blocked(self)

    def _store_behind(self) -> None:
        """The store's writer is behind: pause this queue's publishers until it caught up (the
        same credit flow as a congested consumer; SQLiteStore.backlogged says why)."""
        self.congested = True
        self._check_flow()

    def _store_drained(self) -> None:
        self._waiting_store = False
        self._check_flow()

    def _check_flow(self) -> None:
        if not self.congested:
            return
        store = self.store
        if self._store_flow and store.backlogged:
            if not self._waiting_store:
                self._waiting_store = True
                store.when_drained(self._store_drained)
            return
        if (
            self.message_count < FLOW_LOW
            or self.deleted
            or not any(c.backpressured() for c in self._consumers)
        ):
            self.congested = False
            blocked, self._blocked = self._blocked, set()
            for publisher in blocked:
                publisher.flow_unblocked(self)

    # -- TTL, length limits, queue expiry -------------------------------------------------------

    def _set_expiry(self, msg: Message) -> None:
        ttl = self.options.message_ttl
        if flags_of(msg.props_raw) & FLAG_EXPIRATION:
            try:
                own = int(msg.properties.get("expiration") or "")
            except ValueError:
                own = None
            if own is not None and own >= 0 and (ttl is None or own < ttl):
                ttl = own
        if ttl is not None and not msg.expires:
            msg.expires = _now() + ttl / 1000.0

    def _watch_expiry(self, msg: Message) -> None:
        heap = self._expiry
        heapq.heappush(heap, (msg.expires, msg.seq, msg))
        if heap[0][2] is msg and (
            self._expiry_timer is None
            or self._expiry_timer.when() - EXPIRY_SLACK > _loop_deadline(msg.expires)
        ):
            self._arm_expiry()

    def _arm_expiry(self) -> None:
        if self._expiry_timer is not None:
            self._expiry_timer.cancel()
            self._expiry_timer = None
        if not self._expiry or self.deleted:
            return
        loop = asyncio.get_running_loop()
        # Fire on a 5 ms grid: deadlines close together expire in one timer callback instead of
        # one each (thousands a second with staggered TTLs), at most 5 ms late.
        delay = max(0.0, self._expiry[0][0] - _now()) + EXPIRY_SLACK
        self._expiry_timer = loop.call_later(delay, self._expire_due)

    def _expire_due(self) -> None:
        """Timer: every message whose deadline passed leaves now, wherever it is in the queue."""
        self._expiry_timer = None
        heap = self._expiry
        now = _now()
        while heap and heap[0][0] <= now:
            _, _, msg = heapq.heappop(heap)
            if msg.queued and not msg.dead:
                self._ready.kill(msg)
                msg.queued = False
                self._ready_bytes -= len(msg.body)
                self._expire(msg)
        self._arm_expiry()
        self._check_flow()

    def _expire(self, msg: Message) -> None:
        self._remove(msg, "expired")

    def _remove(self, msg: Message, reason: str) -> None:
        """A message leaves without delivery: dropped, or dead-lettered in the same store batch."""
        self._forget(msg)
        if msg.stored:
            self.store.delete(self.qid, msg.seq)
        if self.dead_letter is not None:
            self.dead_letter(self, msg, reason)

    def _full_for(self, msg: Message) -> bool:
        o = self.options
        if o.max_length is not None and self.message_count >= o.max_length:
            return True
        return (
            o.max_length_bytes is not None
            and self._ready_bytes + self._paged_bytes + len(msg.body) > o.max_length_bytes
        )

    def _enforce_limits(self) -> None:
        """drop-head: the oldest ready messages leave (dead-lettered with reason maxlen)."""
        o = self.options
        while (o.max_length is not None and self.message_count > o.max_length) or (
            o.max_length_bytes is not None
            and self._ready_bytes + self._paged_bytes > o.max_length_bytes
        ):
            msg = self._ready.pop()
            if msg is None:
                break
            msg.queued = False
            self._ready_bytes -= len(msg.body)
            self._remove(msg, "maxlen")

    def _arm_unused(self) -> None:
        """x-expires: a queue with no consumers and no basic.get for that long is deleted."""
        if self._unused_timer is not None:
            self._unused_timer.cancel()
            self._unused_timer = None
        expires = self.options.expires
        if expires is None or self._consumers or self.deleted:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._unused_timer = loop.call_later(expires / 1000.0, self._unused_expired)

    def _unused_expired(self) -> None:
        self._unused_timer = None
        if not self._consumers and not self.deleted and self.on_unused is not None:
            self.on_unused(self)

    def touch(self) -> None:
        """The queue was used (declared, basic.get): restart its x-expires clock."""
        if self.options.expires is not None:
            self._arm_unused()

    # -- consuming ----------------------------------------------------------------------------

    @property
    def consumers(self) -> list[Consumer]:
        return list(self._consumers)

    def has_exclusive_consumer(self) -> bool:
        return any(c.exclusive for c in self._consumers)

    def active_consumer(self) -> Consumer | None:
        """With single active consumer: the one that receives (the earliest subscribed)."""
        return self._consumers[0] if self._sac and self._consumers else None

    def subscribe(self, consumer: Consumer) -> None:
        self._consumers.append(consumer)
        self._levels = None if self._sac else _levels_of(self._consumers)
        self.had_consumers = True
        if self._unused_timer is not None:
            self._unused_timer.cancel()
            self._unused_timer = None
        self.kick()

    def unsubscribe(self, consumer: Consumer) -> None:
        try:
            self._consumers.remove(consumer)
        except ValueError:
            return
        self._levels = None if self._sac else _levels_of(self._consumers)
        self._check_flow()
        if not self._consumers:
            if self.auto_delete and self.on_unused is not None:
                self.on_unused(self)
                return
            self._arm_unused()
        if self._sac:
            self.kick()  # the next consumer becomes the active one

    def _pick(self) -> Consumer | None:
        if self._sac:
            c = self._consumers[0]
            return c if c.can_take() else None
        levels = self._levels
        if levels is None:
            consumers = self._consumers
            for _ in range(len(consumers)):
                c = consumers[0]
                consumers.rotate(-1)
                if c.can_take():
                    return c
            return None
        # Consumer priorities: round-robin among the highest level with room, as RabbitMQ does.
        for level in levels:
            for _ in range(len(level)):
                c = level[0]
                level.rotate(-1)
                if c.can_take():
                    return c
        return None

    def kick(self) -> None:
        """Deal waiting messages to consumers with room."""
        if self._dispatching or self.deleted:
            return
        self._dispatching = True
        try:
            ready = self._ready
            while ready and self._consumers:
                c = self._pick()
                if c is None:
                    break
                msg = self._pop()
                if msg is None:
                    break
                if msg.excluded is not None and id(c) in msg.excluded:
                    c = self._other_consumer(msg)
                    if c is None:
                        msg.queued = True
                        ready.requeue(msg)
                        self._ready_bytes += len(msg.body)
                        break
                self._hand(c, msg)
        finally:
            self._dispatching = False
            if self._paged and len(self._ready) < PAGE_LOW:
                self._page_in()
            if self.congested:
                self._check_flow()

    def _other_consumer(self, msg: Message) -> Consumer | None:
        """A consumer with room that the message was not declared undeliverable to."""
        for c in self._consumers:
            if id(c) not in msg.excluded and c.can_take():  # type: ignore[operator]
                return c
        return None

    def get(self, ack_required: bool) -> asyncio.Future:
        msg = self.get_now(ack_required)
        return resolved((msg, self.message_count))

    def get_now(self, ack_required: bool) -> Message | None:
        """basic.get on this node: the next message, or None."""
        self.touch()
        if self._paged and len(self._ready) < PAGE_LOW:
            self._page_in()
        msg = self._pop()
        if msg is None:
            return None
        if ack_required:
            self.unacked += 1
            if msg.stored:
                self.store.mark_delivered(self.qid, msg.seq)
        else:
            self._forget(msg)
            if msg.stored:
                self.store.delete(self.qid, msg.seq)
        return msg

    # -- paging -------------------------------------------------------------------------------

    def _page_in(self) -> None:
        if self._paging_in or self.store is None:
            return
        self._paging_in = True
        self.store.page_in(self.qid, self._cursor, PAGE_SIZE, self._paged_in)

    def _paged_in(self, rows: list[tuple], counts: dict[int, int] | None = None) -> None:
        """Rows read back from the store join the ready messages (`counts`: the delivery
        counts a replicated queue's new leader recovered, by seq)."""
        self._paging_in = False
        if self.deleted or self.handover is not None:
            return  # a handover reads the paged rows itself
        if len(rows) < PAGE_SIZE:
            # The store holds fewer than counted (a failed write): trust the store.
            self._paged = len(rows)
        budget = self.budget
        ready = self._ready
        now = _now()
        for seq, _transient, route, props, body, expires in rows:
            msg = Message.from_stored(route, props, body)
            msg.seq = seq
            msg.stored = True
            msg.redelivered = seq <= self._delivered_before
            if counts:
                msg.delivery_count = counts.get(seq, 0)
            msg.expires = expires / 1000.0 if expires else 0.0
            self._paged_bytes -= len(body)
            if budget is not None:
                budget.used += len(body) + MESSAGE_OVERHEAD
            if msg.expires and msg.expires <= now:
                self._expire(msg)
                continue
            msg.queued = True
            ready.append(msg)
            self._ready_bytes += len(body)
            if msg.expires:
                self._watch_expiry(msg)
        if rows:
            self._cursor = rows[-1][0]
        self._paged -= len(rows)
        if not self._paged:
            self._paged_bytes = 0
        self.kick()

    def recover(
        self,
        rows: list[tuple],
        count: int,
        max_seq: int,
        delivered: int,
        paged_bytes: int = 0,
        counts: dict[int, int] | None = None,
    ) -> None:
        """Load what the store kept (startup, or a replicated queue's new leader): the head in
        memory, the rest left paged; `counts` gives the recovered messages' delivery counts
        (a replicated queue loads all its rows at once, so they cover every message)."""
        self._seq = max(self._seq, max_seq)
        self._delivered_before = delivered
        self._paged = count
        self._paged_bytes = paged_bytes
        self._cursor = 0
        self._paged_in(rows, counts)

    # -- settlement ---------------------------------------------------------------------------

    def settle(self, msg: Message, outcome: Outcome, modified: Modified | None = None) -> None:
        if self.deleted:
            self._forget(msg)
            if self.successor is not None:
                self.successor.settle_earlier([msg.seq], outcome, modified)
            return
        if self.handover is not None:
            self.handover.settled(msg, outcome, modified)
            return
        self.unacked -= 1
        early = self._settled_early
        if early and self._was_settled_early(msg):
            return
        if outcome is Outcome.ACCEPTED:
            self._forget(msg)
            if msg.stored:
                self.store.delete(self.qid, msg.seq)
            return
        if outcome is Outcome.REJECTED:
            self._remove(msg, "rejected")
            return
        # released / modified: back to its original position.
        if modified is not None:
            if modified.delivery_failed and self._failed(msg):
                self._remove(msg, "delivery_limit")
                return
            if modified.undeliverable_here and modified.consumer is not None:
                if msg.excluded is None:
                    msg.excluded = set()
                msg.excluded.add(id(modified.consumer))
            if modified.annotations:
                msg.annotations = {**(msg.annotations or {}), **modified.annotations}
        self._requeue(msg)
        self.kick()

    def _was_settled_early(self, msg: Message) -> bool:
        """`msg` was accepted through its earlier delivery (its row is gone already)."""
        early = self._settled_early
        if msg.seq in early:
            early.discard(msg.seq)
            self._forget(msg)
            return True
        if not self.unacked:
            early.clear()  # nothing delivered is left: the rest were not in flight here
        return False

    @property
    def last_seq(self) -> int:
        """The seq of the last message this queue took."""
        return self._seq

    def hold_back(self, upto: int, seconds: float) -> None:
        """A replicated queue's new leader: the messages its predecessor may have delivered
        (seq <= `upto`) wait `seconds` before they are delivered again, so that what their
        consumers settle meanwhile (`settle_earlier`) arrives first and they do not come twice.
        Messages never delivered go at once."""
        ready = self._ready
        keep, held = [], {}
        while (msg := ready.pop()) is not None:
            if msg.seq <= upto:
                held[msg.seq] = msg
            else:
                keep.append(msg)
        for msg in keep:
            ready.append(msg)
        if not held:
            return
        for msg in held.values():
            msg.queued = False
            n = len(msg.body)
            self._ready_bytes -= n
            self._held_back_bytes += n
        self._held_back.update(held)  # with any held already (they go back at the first timer)
        asyncio.get_running_loop().call_later(seconds, self._give_back)

    def release_later(self, msgs: list[Message]) -> None:
        """Release the deliveries of a consumer on another node whose stream broke: they wait
        `release_delay` before they are delivered again, as `hold_back` does, because that node
        sends the acks it could not deliver again once it reaches this one (`settle_earlier`)."""
        if not self.release_delay or self.deleted or self.handover is not None:
            self.release_many(msgs)
            return
        early = self._settled_early
        held = self._held_back
        for msg in msgs:
            self.unacked -= 1
            if early and self._was_settled_early(msg):
                continue
            msg.redelivered = True
            held[msg.seq] = msg
            self._held_back_bytes += len(msg.body)
        asyncio.get_running_loop().call_later(self.release_delay, self._give_back)
        self._check_flow()

    def give_back_held(self) -> None:
        """What hold_back holds goes back now (the reason to hold it is gone)."""
        if self._held_back:
            self._give_back()

    def _give_back(self) -> None:
        held, self._held_back = self._held_back, {}
        self._held_back_bytes = 0
        self._ready_by_seq = None  # indexed without them
        if self.deleted:
            return
        for msg in held.values():
            self._requeue(msg)
        self.kick()

    def _failed(self, msg: Message) -> bool:
        """A failed delivery of `msg`: True when it passes the delivery limit (the caller
        removes it). Else a replicated queue records the new count in its log (one record,
        only on this rare path), so that a new leader after a failover counts on from it."""
        msg.delivery_count += 1
        limit = self.options.delivery_limit
        if limit is not None and msg.delivery_count > limit:
            return True
        if self.store_all and msg.stored:
            self.store.set_delivery_count(self.qid, msg.seq, msg.delivery_count)
        return False

    def _settle_held_back(self, msg: Message, outcome: Outcome) -> None:
        if outcome is Outcome.MODIFIED and not self._failed(msg):
            return
        del self._held_back[msg.seq]
        self._held_back_bytes -= len(msg.body)
        if outcome is Outcome.ACCEPTED:
            self._forget(msg)
            if msg.stored:
                self.store.delete(self.qid, msg.seq)
        else:
            self._remove(msg, "rejected" if outcome is Outcome.REJECTED else "delivery_limit")

    def settle_earlier(
        self, seqs: list[int], outcome: Outcome, modified: Modified | None = None
    ) -> None:
        """Settlements of deliveries an earlier leader of this replicated queue made, by seq
        (seqs are never reused across epochs: cluster/replication/member.py). Every message the
        new leader inherited is ready or delivered again: a ready one is settled as asked; one
        delivered again counts as acknowledged once its earlier delivery is, so an acknowledged
        message never comes back (its second delivery's consumer may still see it once)."""
        if self.deleted:
            if self.successor is not None:
                self.successor.settle_earlier(seqs, outcome, modified)
            return
        if self.handover is not None or outcome is Outcome.RELEASED:
            return  # released: it is ready or delivered already
        failed = modified is not None and modified.delivery_failed
        if outcome is Outcome.MODIFIED and not failed:
            return
        index = self._ready_by_seq
        if index is None:
            # Late settlements come in a burst after a failover: index the ready messages once
            # (only inherited ones can be named) and forget the index a minute later.
            index = self._ready_by_seq = {m.seq: m for m in self._ready}
            asyncio.get_running_loop().call_later(EARLIER_INDEX_FOR, self._drop_ready_index)
        wanted = []
        held = self._held_back
        for seq in seqs:
            if held and seq in held:
                self._settle_held_back(held[seq], outcome)
                continue
            msg = index.get(seq)
            if msg is None or not msg.queued or msg.dead:
                wanted.append(seq)  # delivered again, or gone
                continue
            if outcome is Outcome.MODIFIED and not self._failed(msg):
                continue
            del index[seq]
            self._ready.kill(msg)
            msg.queued = False
            self._ready_bytes -= len(msg.body)
            if outcome is Outcome.ACCEPTED:
                self._forget(msg)
                if msg.stored:
                    self.store.delete(self.qid, msg.seq)
            else:
                self._remove(msg, "rejected" if outcome is Outcome.REJECTED else "delivery_limit")
        if outcome is Outcome.ACCEPTED and self.unacked and self.store is not None:
            for seq in wanted:
                if seq <= self._seq:
                    self.store.delete(self.qid, seq)
                    self._settled_early.add(seq)
        self._check_flow()

    def _drop_ready_index(self) -> None:
        self._ready_by_seq = None

    def _requeue(self, msg: Message) -> None:
        msg.redelivered = True
        if msg.expires and msg.expires <= _now():
            self._expire(msg)
            return
        msg.queued = True
        self._ready.requeue(msg)
        self._ready_bytes += len(msg.body)
        if msg.expires:
            self._watch_expiry(msg)

    def release_many(self, msgs: list[Message]) -> None:
        """Release several deliveries at once (channel close), dispatching once at the end."""
        if self.deleted:
            for msg in msgs:
                self._forget(msg)
            return
        if self.handover is not None:
            for msg in msgs:
                self.handover.settled(msg, Outcome.RELEASED, None)
            return
        early = self._settled_early
        for msg in msgs:
            self.unacked -= 1
            if early and self._was_settled_early(msg):
                continue
            self._requeue(msg)
        self.kick()

    # -- management ---------------------------------------------------------------------------

    def purge(self) -> asyncio.Future:
        return resolved(self.purge_now())

    def purge_now(self) -> int:
        n = self.message_count
        dropped = [*self._ready, *self._held_back.values()]
        self._held_back = {}
        self._held_back_bytes = 0
        self._ready.clear()
        self._ready_bytes = 0
        self._expiry.clear()
        for msg in dropped:
            msg.queued = False
            self._forget(msg)
            if msg.stored:
                self.store.delete(self.qid, msg.seq)
        if self._paged:
            self.store.purge_after(self.qid, self._cursor)
            self._paged = 0
            self._paged_bytes = 0
        self._check_flow()
        if self.on_purged is not None:
            self.on_purged(self)
        return n

    def stats(self) -> asyncio.Future:
        return resolved(self.stats_now())

    def stats_now(self) -> tuple[int, int]:
        """(messages ready, consumers)."""
        return self.message_count, len(self._consumers)

    @property
    def consumer_count(self) -> int:
        return len(self._consumers)

    @property
    def message_count(self) -> int:
        return len(self._ready) + self._paged + len(self._held_back)

    @property
    def message_bytes(self) -> int:
        return self._ready_bytes + self._paged_bytes + self._held_back_bytes

    def hand_over(self, handover: Any) -> tuple[list[Message], int, int, list[Consumer]]:
        """Leadership moved to another node: stop being a queue and give up what it holds.

        Returns (the ready messages in memory, in delivery order; the sequence number after which
        the paged-out ones lie in the store; how many there are; the consumers, which the caller
        tells). From now on settlements of deliveries made before go to `handover`, and the queue
        never delivers, pages in or expires anything again. It is not `deleted`: a delivery
        released later (a channel closing) must reach the handover, not be dropped."""
        self.handover = handover
        self.on_unused = None
        for timer in (self._expiry_timer, self._unused_timer):
            if timer is not None:
                timer.cancel()
        self._expiry_timer = self._unused_timer = None
        self._expiry.clear()
        ready = []
        while True:
            msg = self._pop()  # expired ones leave as they would have here (dead-lettered)
            if msg is None:
                break
            self._forget(msg)
            ready.append(msg)
        paged, self._paged, self._paged_bytes = self._paged, 0, 0
        consumers = list(self._consumers)
        self._consumers.clear()
        self._levels = None
        # Publishers paused by this queue's congestion go on (to the new leader).
        self.congested = True
        self._check_flow()
        return ready, self._cursor, paged, consumers

    def detach_consumers(self) -> list[Consumer]:
        """Another copy of this queue takes over (a replicated queue's new leader): give up
        the consumers without cancelling them, and settle nothing here from now on."""
        consumers = list(self._consumers)
        self._consumers.clear()
        self._levels = None
        self.deleted = True
        for t in (self._expiry_timer, self._unused_timer):
            if t is not None:
                t.cancel()
        self._expiry_timer = self._unused_timer = None
        return consumers

    def delete(self, reason: str) -> int:
        """Mark deleted, cancel consumers, drop messages; returns the number of ready messages."""
        n = self.message_count
        self.deleted = True
        for msg in [*self._ready, *self._held_back.values()]:
            self._forget(msg)
        self._ready.clear()
        self._held_back = {}
        self._held_back_bytes = 0
        self._expiry.clear()
        for timer in (self._expiry_timer, self._unused_timer):
            if timer is not None:
                timer.cancel()
        self._paged = 0
        if self.store is not None:
            self.store.drop_queue(self.qid)
        consumers = list(self._consumers)
        self._consumers.clear()
        self._levels = None
        for c in consumers:
            c.cancelled(self, reason)
        self._check_flow()
        return n


REJECTED = -1
EXPIRY_SLACK = 0.005
# How long a new leader keeps its ready messages indexed by seq for late settlements.
EARLIER_INDEX_FOR = 60.0


def _now() -> float:
    return time.time()


def _loop_deadline(wall: float) -> float:
    """A wall-clock deadline on the event loop's clock (what TimerHandle.when() returns)."""
    return asyncio.get_running_loop().time() + (wall - time.time())


def _levels_of(consumers: deque[Consumer]) -> list[deque[Consumer]] | None:
    priorities = {getattr(c, "priority", 0) for c in consumers}
    if len(priorities) <= 1:
        return None
    return [
        deque(c for c in consumers if getattr(c, "priority", 0) == p)
        for p in sorted(priorities, reverse=True)
    ]
