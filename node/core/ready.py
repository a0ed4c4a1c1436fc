"""The ready messages of a queue: FIFO with original-position requeue, or by priority.

`FifoReady` keeps never-delivered messages in a deque and released ones in a heap keyed by their
queue sequence number; a released message is always older than anything never delivered, so the
heap is served first and every message comes back at its original position.

Messages that leave from the middle (expired by TTL) are not searched for: they are marked `dead`
and skipped when they reach the front, and the structure is compacted once tombstones are the
majority. That keeps expiry O(log n) per message instead of O(n).

`PriorityReady` is one `FifoReady` per priority level (x-max-priority, up to 255), highest first.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterator

from .message import Message

_COMPACT_MIN = 64


class FifoReady:
    __slots__ = ("_q", "_rq", "_dead")

    def __init__(self) -> None:
        self._q: deque[Message] = deque()
        self._rq: list[tuple[int, Message]] = []
        self._dead = 0

    def __len__(self) -> int:
        return len(self._q) + len(self._rq) - self._dead

    def __bool__(self) -> bool:
        return len(self._q) + len(self._rq) > self._dead

    def append(self, msg: Message) -> None:
        self._q.append(msg)

    def requeue(self, msg: Message) -> None:
        heapq.heappush(self._rq, (msg.seq, msg))

    def pop(self) -> Message | None:
        while True:
            if self._rq:
                msg = heapq.heappop(self._rq)[1]
            elif self._q:
                msg = self._q.popleft()
            else:
                return None
            if msg.dead:
                self._dead -= 1
                continue
            return msg

    def kill(self, msg: Message) -> None:
        """`msg` (which is in here) leaves: skipped from now on."""
        msg.dead = True
        self._dead += 1
        if self._dead > _COMPACT_MIN and self._dead * 2 > len(self._q) + len(self._rq):
            self._q = deque(m for m in self._q if not m.dead)
            self._rq = [e for e in self._rq if not e[1].dead]
            heapq.heapify(self._rq)
            self._dead = 0

    def __iter__(self) -> Iterator[Message]:
        for _, m in self._rq:
            if not m.dead:
                yield m
        for m in self._q:
            if not m.dead:
                yield m

    def clear(self) -> None:
        self._q.clear()
        self._rq.clear()
        self._dead = 0


class PriorityReady:
    __slots__ = ("_levels", "_count", "max_priority")

    def __init__(self, max_priority: int) -> None:
        self.max_priority = max_priority
        self._levels = [FifoReady() for _ in range(max_priority + 1)]
        self._count = 0

    def _level(self, msg: Message) -> FifoReady:
        p = msg.priority
        return self._levels[p if p <= self.max_priority else self.max_priority]

    def __len__(self) -> int:
        return self._count

    def __bool__(self) -> bool:
        return self._count > 0

    def append(self, msg: Message) -> None:
        self._level(msg).append(msg)
        self._count += 1

    def requeue(self, msg: Message) -> None:
        self._level(msg).requeue(msg)
        self._count += 1

    def pop(self) -> Message | None:
        if not self._count:
            return None
        for level in reversed(self._levels):
            if level:
                msg = level.pop()
                if msg is not None:
                    self._count -= 1
                    return msg
        return None

    def kill(self, msg: Message) -> None:
        self._level(msg).kill(msg)
        self._count -= 1

    def __iter__(self) -> Iterator[Message]:
        for level in reversed(self._levels):
            yield from level

    def clear(self) -> None:
        for level in self._levels:
            level.clear()
        self._count = 0
