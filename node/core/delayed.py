"""Delayed delivery for `x-delayed-message` exchanges (the RabbitMQ plugin's interface, made durable).

A message published with an `x-delay` header (ms) waits here until its deadline, then is routed by
the exchange as its `x-delayed-type` would route it. Persistent messages to a durable exchange are
kept in the message store under a pseudo-queue of the exchange, with the deadline in the row, so
they survive a crash; the publisher's confirm waits for that commit like any persistent publish.
When one is due, its delete from the pseudo-queue and its inserts into the target queues share one
store batch (one transaction): a crash either leaves it delayed or delivers it, never both.

One timer per exchange, for the earliest deadline: nothing runs between deadlines.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections.abc import Callable
from typing import Any

from ..wire.table import as_int
from .message import Message

PSEUDO_PREFIX = "\x00delayed:"


def pseudo_queue(exchange: str) -> str:
    return PSEUDO_PREFIX + exchange


def delay_of(msg: Message) -> int:
    """The x-delay header of a message to an x-delayed-message exchange, in ms (0: none)."""
    value = msg.headers().get("x-delay")
    delay = as_int(value) if value is not None else None
    return delay if delay is not None and delay > 0 else 0


class DelayedMessages:
    def __init__(
        self,
        vhost: str,
        exchange: str,
        durable: bool,
        store: Any,
        deliver: Callable[[str, str, Message], None],
    ) -> None:
        self.vhost = vhost
        self.exchange = exchange
        self.durable = durable
        self.store = store
        self.qid = (
            store.queue_id(vhost, pseudo_queue(exchange), durable) if store is not None else 0
        )
        self._deliver = deliver
        self._heap: list[tuple[float, int, Message]] = []
        self._seq = 0
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._heap)

    def add(self, msg: Message, delay_ms: int) -> int:
        """Hold `msg` for `delay_ms`; returns the store epoch that makes it durable (0: none)."""
        self._seq += 1
        msg.seq = self._seq
        deadline = time.time() + delay_ms / 1000.0
        epoch = 0
        if self.store is not None and self.durable and msg.persistent:
            epoch = self.store.append(
                self.qid, msg.seq, False, msg.route_raw, msg.props_raw, msg.body, deadline
            )
            msg.stored = True
        self._push(deadline, msg)
        return epoch

    def recover(self, rows: list[tuple]) -> None:
        for seq, _transient, route, props, body, expires in rows:
            msg = Message.from_stored(route, props, body)
            msg.seq = seq
            msg.stored = True
            self._seq = max(self._seq, seq)
            self._push(expires / 1000.0, msg)

    def _push(self, deadline: float, msg: Message) -> None:
        heapq.heappush(self._heap, (deadline, msg.seq, msg))
        if self._heap[0][2] is msg:
            self._arm()

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._heap:
            delay = max(0.0, self._heap[0][0] - time.time())
            self._timer = asyncio.get_running_loop().call_later(delay, self._due)

    def _due(self) -> None:
        self._timer = None
        now = time.time()
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, seq, msg = heapq.heappop(heap)
            if msg.stored:
                self.store.delete(self.qid, seq)
                msg.stored = False
            self._deliver(self.vhost, self.exchange, msg)
        self._arm()

    def drop(self) -> None:
        """The exchange was deleted: its delayed messages go with it."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._heap.clear()
        if self.store is not None:
            self.store.drop_queue(self.qid)
