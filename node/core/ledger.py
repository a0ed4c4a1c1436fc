"""Confirmation tokens: what a publisher confirm waits for, whoever makes the message safe.

A queue that cannot take responsibility for a message at once (a store commit, a forward to the
queue's node in a cluster) hands out a token from the node's `ConfirmLedger`; the front end keeps
(publish, token) in order and confirms once `ledger.committed >= token`. Tokens may be resolved
out of order (a remote node answers before the local disk); `committed` is the highest token with
every token at or below it resolved, so confirms still go out in publish order, and failed tokens
turn into basic.nack / rejected dispositions.

Tokens are allocated lazily (by a batch that actually holds a message), so an idle source never
holds the ledger back.
"""

from __future__ import annotations

import asyncio
import heapq
from typing import Protocol


class LedgerWatcher(Protocol):
    def store_committed(self, committed: int, failed: frozenset[int]) -> None: ...


class LedgerError(Exception):
    pass


class ConfirmLedger:
    def __init__(self) -> None:
        self._next = 1
        self.committed = 0
        self._open: set[int] = set()
        self._order: list[int] = []  # heap of tokens handed out; resolved ones dropped lazily
        self.failed: set[int] = set()
        self.last_error: str | None = None
        self.watchers: set[LedgerWatcher] = set()
        self._waiters: list[tuple[int, asyncio.Future]] = []
        self._forwards: dict[int, list[int]] = {}  # token -> earlier tokens it resolves too

    def allocate(self) -> int:
        token = self._next
        self._next += 1
        self._open.add(token)
        heapq.heappush(self._order, token)
        return token

    def forward(self, token: int, to: int) -> None:
        """`to` (handed out earlier) resolves as `token` does: a publish held under `to` and
        sent on later under `token`. A waiter on `token` cannot do this: `to` is older, so
        `token` never counts as committed before `to` does."""
        if token in self._open:
            self._forwards.setdefault(token, []).append(to)
        else:  # resolved already; `to` is open and older, so a failure is still on record
            self.resolve([to], ok=token not in self.failed, error=self.last_error)

    def resolve(self, tokens: list[int], ok: bool, error: str | None = None) -> None:
        forwards = self._forwards
        if forwards:
            more = tokens
            while more:
                more = [e for t in more if t in forwards for e in forwards.pop(t)]
                tokens = [*tokens, *more]
        for token in tokens:
            self._open.discard(token)
            if not ok:
                self.failed.add(token)
        if not ok:
            self.last_error = error
        order = self._order
        while order and order[0] not in self._open:
            heapq.heappop(order)
        committed = order[0] - 1 if order else self._next - 1
        if committed <= self.committed and ok:
            return
        self.committed = max(self.committed, committed)
        failed = frozenset(t for t in self.failed if t <= self.committed)
        for watcher in list(self.watchers):
            watcher.store_committed(self.committed, failed)
        if self._waiters:
            keep = []
            for t, fut in self._waiters:
                if t > self.committed:
                    keep.append((t, fut))
                elif not fut.done():
                    if t in self.failed:
                        fut.set_exception(LedgerError(self.last_error or "write failed"))
                    else:
                        fut.set_result(None)
            self._waiters = keep
        # Everyone has seen these failures now.
        self.failed -= failed

    def wait(self, token: int) -> asyncio.Future:
        """A future resolved when `token` is (failed with LedgerError if it failed)."""
        fut = asyncio.get_running_loop().create_future()
        if token <= self.committed:
            fut.set_result(None)
        else:
            self._waiters.append((token, fut))
        return fut
