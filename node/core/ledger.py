"""Confirmation tokens: what a publisher confirm waits for, whoever makes the message safe.

A queue that cannot take responsibility for a message at once (a store commit, a forward to the
queue's node in a cluster) hands out a token from the node's `ConfirmLedger`; the front end keeps
(publish, token) in order and confirms once `ledger.committed >= token`. Tokens may be resolved
out of order (a remote node answers before the local disk); `committed` is the highest token with
every token at or below it resolved, so confirms still go out in publish order, and failed tokens
turn into basic.nack / rejected dispositions.

Tokens are allocated lazily (by a batch that actually holds a message), so an idle source never
holds the ledger back.

A token can be resolved before anyone looks at it (a queue replica that no longer leads refuses a
publish inside `enqueue`), so "token <= committed" alone does not mean it made it: whoever looks
at a token late asks `did_fail` too. The ledger remembers the last KEEP_FAILURES failures for
that; failures are rare (a leader change, a disk error), and a token is looked at within the
loop turn that produced it.

A message that several queues take gets one token per queue that made one; `join` folds them
into one token that fails when any of them does, so the publisher's confirm waits for all.
"""

from __future__ import annotations

import asyncio
import heapq
from collections import deque
from collections.abc import Iterable
from typing import Protocol

KEEP_FAILURES = 65536


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
        self._failures: set[int] = set()  # reported failures, remembered for did_fail
        self._failure_order: deque[int] = deque()
        self._joins: dict[int, list[int]] = {}  # token -> join tokens waiting for it
        self._join_left: dict[int, list] = {}  # join token -> [tokens still open, ok so far]

    def allocate(self) -> int:
        token = self._next
        self._next += 1
        self._open.add(token)
        heapq.heappush(self._order, token)
        return token

    def did_fail(self, token: int) -> bool:
        """Whether `token` was resolved as failed (answers for tokens up to KEEP_FAILURES
        failures back; see the module docstring)."""
        return token in self.failed or token in self._failures

    def join(self, tokens: Iterable[int]) -> int:
        """One token for several (a message several queues took): it resolves once all of them
        have, failed when any of them failed. Being newer than each, it never counts as
        committed before they all do."""
        joined = self.allocate()
        left = {t for t in tokens if t in self._open}
        ok = not any(self.did_fail(t) for t in tokens if t not in left)
        if not left:
            self.resolve([joined], ok=ok, error=self.last_error)
            return joined
        self._join_left[joined] = [len(left), ok]
        for t in left:
            self._joins.setdefault(t, []).append(joined)
        return joined

    def forward(self, token: int, to: int) -> None:
        """`to` (handed out earlier) resolves as `token` does: a publish held under `to` and
        sent on later under `token`. A waiter on `token` cannot do this: `to` is older, so
        `token` never counts as committed before `to` does."""
        if token in self._open:
            self._forwards.setdefault(token, []).append(to)
        else:  # resolved already
            self.resolve([to], ok=not self.did_fail(token), error=self.last_error)

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
        if self._joins:
            self._resolve_joins(tokens, ok)
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
        # Every watcher has seen these failures now; later lookers ask did_fail.
        if failed:
            self.failed -= failed
            self._failures.update(failed)
            self._failure_order.extend(sorted(failed))
            while len(self._failure_order) > KEEP_FAILURES:
                self._failures.discard(self._failure_order.popleft())

    def _resolve_joins(self, tokens: list[int], ok: bool) -> None:
        done: list[tuple[int, bool]] = []
        for t in tokens:
            for joined in self._joins.pop(t, ()):
                entry = self._join_left[joined]
                entry[0] -= 1
                entry[1] = entry[1] and ok
                if entry[0] == 0:
                    del self._join_left[joined]
                    done.append((joined, entry[1]))
        for joined, joined_ok in done:  # each a single call: its watchers see it once
            self.resolve([joined], ok=joined_ok, error=self.last_error)

    def wait(self, token: int) -> asyncio.Future:
        """A future resolved when `token` is (failed with LedgerError if it failed)."""
        fut = asyncio.get_running_loop().create_future()
        if token <= self.committed:
            if self.did_fail(token):
                fut.set_exception(LedgerError(self.last_error or "write failed"))
            else:
                fut.set_result(None)
        else:
            self._waiters.append((token, fut))
        return fut
