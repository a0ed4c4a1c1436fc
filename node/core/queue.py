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

import heapq
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from .message import Message
from .outcome import Modified, Outcome

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
    """What the front ends and the router use; LocalQueue now, RemoteQueue (gRPC) in a cluster."""

    vhost: str
    name: str

    def enqueue(self, msg: Message) -> Any: ...

    def subscribe(self, consumer: Consumer) -> None: ...

    def unsubscribe(self, consumer: Consumer) -> None: ...

    def kick(self) -> None: ...

    def settle(self, msg: Message, outcome: Outcome, modified: Modified | None = None) -> None: ...

    def get(self, ack_required: bool) -> Message | None: ...

    def purge(self) -> int: ...

    def stats(self) -> tuple[int, int]: ...


class LocalQueue:
    __slots__ = (
        "vhost",
        "name",
        "durable",
        "exclusive_owner",
        "auto_delete",
        "arguments",
        "_ready",
        "_requeued",
        "_seq",
        "_consumers",
        "unacked",
        "deleted",
        "had_consumers",
        "_levels",
        "on_unused",
        "dead_letter",
        "_dispatching",
        "congested",
        "_blocked",
        "store",
        "qid",
        "budget",
        "_paged",
        "_cursor",
        "_paging_in",
        "_delivered_before",
        "deleting",
    )

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
    ) -> None:
        self.vhost = vhost
        self.name = name
        self.durable = durable
        self.exclusive_owner = exclusive_owner
        self.auto_delete = auto_delete
        self.arguments = arguments or {}
        self._ready: deque[Message] = deque()
        self._requeued: list[tuple[int, Message]] = []
        self._seq = 0
        self._consumers: deque[Consumer] = deque()
        self.unacked = 0
        self.deleted = False
        self.had_consumers = False
        # Consumers grouped by priority, highest first; None while all share one priority.
        self._levels: list[deque[Consumer]] | None = None
        # Called when an auto-delete queue loses its last consumer.
        self.on_unused: Callable[[LocalQueue], None] | None = None
        # Called with a rejected message (dead-lettering lands here with queue arguments).
        self.dead_letter: Callable[[LocalQueue, Message, str], None] | None = None
        self._dispatching = False
        self.congested = False
        self._blocked: set[FlowControlled] = set()
        # Persistence and paging (node.store.SQLiteStore); None keeps everything in memory.
        self.store = store
        self.qid = store.queue_id(vhost, name, durable) if store is not None else 0
        self.budget = budget
        self._paged = 0  # messages only in the store, all younger than anything in memory
        self._cursor = 0  # highest seq held in memory or paged in: the next page starts after it
        self._paging_in = False
        self._delivered_before = (
            0  # after recovery: seqs up to this were delivered before the crash
        )

    # -- publishing ---------------------------------------------------------------------------

    def enqueue(self, msg: Message) -> int:
        """Take a message; returns 0 when it is safe now, else the store epoch that makes it so."""
        self._seq += 1
        seq = msg.seq = self._seq
        epoch = 0
        store = self.store
        if store is not None and self.durable and msg.persistent:
            epoch = store.append(self.qid, seq, False, msg.route_raw, msg.props_raw, msg.body)
            msg.stored = True
        consumers = self._consumers
        if consumers and not self._ready and not self._requeued and not self._paged:
            if len(consumers) == 1 and self._levels is None:
                c = consumers[0]
                if c.can_take():
                    self._hand(c, msg)
                    return epoch
            else:
                c = self._pick()
                if c is not None:
                    self._hand(c, msg)
                    return epoch
        budget = self.budget
        if store is not None and budget is not None and (self._paged or budget.used > budget.limit):
            # Over the memory budget: the message lives only in the store until paged back in.
            if not msg.stored:
                store.append(self.qid, seq, True, msg.route_raw, msg.props_raw, msg.body)
            self._paged += 1
            return epoch
        self._ready.append(msg)
        self._cursor = seq
        if budget is not None:
            budget.used += len(msg.body) + MESSAGE_OVERHEAD
        if consumers and len(self._ready) > FLOW_HIGH and not self.congested:
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

    def block_publisher(self, publisher: FlowControlled) -> None:
        if publisher not in self._blocked:
            self._blocked.add(publisher)
            publisher.flow_blocked(self)

    def _check_flow(self) -> None:
        if not self.congested:
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

    # -- consuming ----------------------------------------------------------------------------

    @property
    def consumers(self) -> list[Consumer]:
        return list(self._consumers)

    def has_exclusive_consumer(self) -> bool:
        return any(c.exclusive for c in self._consumers)

    def subscribe(self, consumer: Consumer) -> None:
        self._consumers.append(consumer)
        self._levels = _levels_of(self._consumers)
        self.had_consumers = True
        self.kick()

    def unsubscribe(self, consumer: Consumer) -> None:
        try:
            self._consumers.remove(consumer)
        except ValueError:
            return
        self._levels = _levels_of(self._consumers)
        self._check_flow()
        if not self._consumers and self.auto_delete and self.on_unused is not None:
            self.on_unused(self)

    def _pick(self) -> Consumer | None:
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
            requeued = self._requeued
            while (ready or requeued) and self._consumers:
                c = self._pick()
                if c is None:
                    return
                msg = heapq.heappop(requeued)[1] if requeued else ready.popleft()
                self._hand(c, msg)
        finally:
            self._dispatching = False
            if self._paged and len(self._ready) < PAGE_LOW:
                self._page_in()
            if self.congested:
                self._check_flow()

    def get(self, ack_required: bool) -> Message | None:
        if self._paged and len(self._ready) < PAGE_LOW:
            self._page_in()
        if self._requeued:
            msg = heapq.heappop(self._requeued)[1]
        elif self._ready:
            msg = self._ready.popleft()
        else:
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

    def _paged_in(self, rows: list[tuple]) -> None:
        self._paging_in = False
        if self.deleted:
            return
        if len(rows) < PAGE_SIZE:
            # The store holds fewer than counted (a failed write): trust the store.
            self._paged = len(rows)
        budget = self.budget
        ready = self._ready
        for seq, _transient, route, props, body in rows:
            msg = Message.from_stored(route, props, body)
            msg.seq = seq
            msg.stored = True
            msg.redelivered = seq <= self._delivered_before
            ready.append(msg)
            if budget is not None:
                budget.used += len(body) + MESSAGE_OVERHEAD
        if rows:
            self._cursor = rows[-1][0]
        self._paged -= len(rows)
        self.kick()

    def recover(self, rows: list[tuple], count: int, max_seq: int, delivered: int) -> None:
        """Load what the store kept (startup): the head in memory, the rest left paged."""
        self._seq = max(self._seq, max_seq)
        self._delivered_before = delivered
        self._paged = count
        self._cursor = 0
        self._paged_in(rows)

    # -- settlement ---------------------------------------------------------------------------

    def settle(self, msg: Message, outcome: Outcome, modified: Modified | None = None) -> None:
        if self.deleted:
            self._forget(msg)
            return
        self.unacked -= 1
        if outcome is Outcome.ACCEPTED or outcome is Outcome.REJECTED:
            self._forget(msg)
            if msg.stored:
                self.store.delete(self.qid, msg.seq)
            if outcome is Outcome.REJECTED and self.dead_letter is not None:
                self.dead_letter(self, msg, "rejected")
            return
        # released / modified: back to its original position.
        msg.redelivered = True
        if modified is not None and modified.delivery_failed:
            msg.delivery_count += 1
        heapq.heappush(self._requeued, (msg.seq, msg))
        self.kick()

    def release_many(self, msgs: list[Message]) -> None:
        """Release several deliveries at once (channel close), dispatching once at the end."""
        if self.deleted:
            for msg in msgs:
                self._forget(msg)
            return
        for msg in msgs:
            self.unacked -= 1
            msg.redelivered = True
            heapq.heappush(self._requeued, (msg.seq, msg))
        self.kick()

    # -- management ---------------------------------------------------------------------------

    def purge(self) -> int:
        n = self.message_count
        dropped = list(self._ready) + [m for _, m in self._requeued]
        self._ready.clear()
        self._requeued.clear()
        for msg in dropped:
            self._forget(msg)
            if msg.stored:
                self.store.delete(self.qid, msg.seq)
        if self._paged:
            self.store.purge_after(self.qid, self._cursor)
            self._paged = 0
        self._check_flow()
        return n

    def stats(self) -> tuple[int, int]:
        """(messages ready, consumers)."""
        return len(self._ready) + len(self._requeued) + self._paged, len(self._consumers)

    @property
    def message_count(self) -> int:
        return len(self._ready) + len(self._requeued) + self._paged

    def delete(self, reason: str) -> int:
        """Mark deleted, cancel consumers, drop messages; returns the number of ready messages."""
        n = self.message_count
        self.deleted = True
        for msg in self._ready:
            self._forget(msg)
        for _, msg in self._requeued:
            self._forget(msg)
        self._ready.clear()
        self._requeued.clear()
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


def _levels_of(consumers: deque[Consumer]) -> list[deque[Consumer]] | None:
    priorities = {getattr(c, "priority", 0) for c in consumers}
    if len(priorities) <= 1:
        return None
    return [
        deque(c for c in consumers if getattr(c, "priority", 0) == p)
        for p in sorted(priorities, reverse=True)
    ]
