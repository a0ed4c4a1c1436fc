"""Handing a queue's messages to its new leader after its leadership moved (rebalance, drain).

Theory of operation. When a MoveQueue takes a queue away from this node, its `LocalQueue` stops
being a queue (`LocalQueue.hand_over`) and a `Handover` takes what it held:

- the ready messages in memory, in their delivery order, then the ones paged out to the store,
  read back a page at a time in sequence order (they are all younger than those in memory);
- the deliveries made before the move and not settled yet. An ack deletes the message here; a
  reject dead-letters it as the queue would have; a release (nack/reject with requeue, a channel
  or link closing, the forwarding stream of a consumer on another node ending) sends it on like
  the rest, behind what is already on its way.

Each message goes to whatever handle the queue has now (`resolve`): normally the `RemoteQueue` of
the new leader, whose `enqueue` returns a ConfirmLedger token resolved by that node's confirm,
i.e. after its store commit for a persistent message of a durable queue. Only then is the message's
row deleted here, so a crash at any point loses nothing: rows left behind are handed over again
after the restart (`QueueMoves.recover`), and the new leader may get some twice (at-least-once).

Nothing is forwarded before the new leader serves the queue (`_probe`: its `stats()` answers):
a message that reached it before it applied the MoveQueue would be forwarded back here, and
back again, each hop's confirm waiting for the next one's token in the node's ConfirmLedger,
which confirms in order — a cycle that would hold up every confirm of this node.

At most `window` messages are unconfirmed at once, which bounds the memory a handover takes and
the load it puts on the link. A refused or failed forward (the new leader down, the link broken)
is tried again after RETRY seconds from the same message on; the order among messages is kept
except around such a partial failure.

The queue's store row is detached first (`SQLiteStore.detach_queue`): the same queue name may be
created on this node again (moved back) while the old rows are still being handed over. When every
message is confirmed and no delivery is outstanding, the row goes and `on_done` is called (the
QueueMoves then proposes QueueHandedOver, which tells the cluster this node holds nothing of it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from merpati.node.core.message import Message
from merpati.node.core.outcome import Modified, Outcome
from merpati.node.core.queue import REJECTED, LocalQueue, QueueHandle

log = logging.getLogger("merpati.handover")

# Messages forwarded and not yet confirmed by the new leader, at most (the node's
# --handover-window setting overrides it).
WINDOW = 1000
# Rows read back from the store at a time.
PAGE = 1000
# Seconds before a refused or failed forward is tried again.
RETRY = 1.0
# Seconds between asking whether the new leader serves the queue yet (see Handover._probe).
PROBE_RETRY = 0.05


class Handover:
    """What is left of one queue this node led, on its way to the queue's current leader."""

    def __init__(
        self,
        vhost: str,
        name: str,
        store: Any,
        qid: int,
        resolve: Callable[[], QueueHandle | None],
        on_done: Callable[[Handover], None],
        window: int = WINDOW,
    ) -> None:
        self.vhost = vhost
        self.name = name
        self.store = store
        self.qid = qid
        # The queue's handle now (None: the queue no longer exists, its messages go with it).
        self.resolve = resolve
        self.on_done = on_done
        self.window = max(1, window)
        self.ledger = store.ledger if store is not None else None
        self.queue: LocalQueue | None = None  # None when handing over rows left by a crash
        # Without `queue`: dead-letters a message as the queue would (the broker sets it).
        self.dead_letter: Callable[[Message, str], None] | None = None
        self._pending: deque[Message] = deque()  # to forward, in order
        self._inflight: list[tuple[int, Message]] = []  # (ledger token, message), forwarded
        self._unordered = False  # a token lower than the one before it went into _inflight
        self._after = 0  # store rows with a higher sequence number are still to be read
        self._more = False
        self._unread = 0  # how many rows that is (as far as known)
        self._reading = False
        self._retry: asyncio.TimerHandle | None = None
        self._pump_scheduled = False
        self._serving: QueueHandle | None = None  # the target known to serve the queue
        self._probing = False
        self._probe_delay = PROBE_RETRY
        self._ignore_read = False  # a purge came while a read was under way
        self.moved = 0  # confirmed by the new leader
        self.done = False
        self.aborted = False
        self.last_error = ""

    # -- starting -----------------------------------------------------------------------------

    def take_queue(
        self, q: LocalQueue, left_to_their_node: Callable[[Any], bool], reason: str
    ) -> None:
        """Take over a LocalQueue whose leadership just moved away. Its consumers are cancelled
        (basic.cancel with consumer_cancel_notify, as RabbitMQ does; an AMQP 1.0 link is
        detached), except those standing for a consumer on another node: their node cancels
        them when it applies the same MoveQueue, and their stream's end releases what they hold
        to this handover, while acks sent before that still count."""
        self.queue = q
        ready, cursor, paged, consumers = q.hand_over(self)
        self._pending.extend(ready)
        self._after = cursor
        self._unread = paged
        self._more = paged > 0 and self.store is not None
        if self.store is not None and q.qid:
            self.store.detach_queue(q.qid)
        for c in consumers:
            if not left_to_their_node(c):
                c.cancelled(q, reason)
        self._pump()

    def take_stored(self, count: int) -> None:
        """Hand over the `count` rows a crash left in the store under `qid` (restart)."""
        self._after = 0
        self._unread = count
        self._more = True
        self.store.detach_queue(self.qid)
        self._pump()

    # -- progress -----------------------------------------------------------------------------

    @property
    def unacked(self) -> int:
        """Deliveries made before the move that are not settled yet."""
        return max(0, self.queue.unacked) if self.queue is not None else 0

    @property
    def remaining(self) -> int:
        """Messages not yet confirmed by the new leader (deliveries outstanding not counted)."""
        return len(self._pending) + len(self._inflight) + (self._unread if self._more else 0)

    def progress(self) -> dict[str, Any]:
        return {
            "vhost": self.vhost,
            "queue": self.name,
            "moved": self.moved,
            "remaining": self.remaining,
            "unacked": self.unacked,
            "error": self.last_error,
        }

    # -- settlements of deliveries made before the move (LocalQueue forwards them) --------------

    def settled(self, msg: Message, outcome: Outcome, modified: Modified | None) -> None:
        q = self.queue
        assert q is not None
        q.unacked -= 1
        if self.done:
            q._forget(msg)  # aborted (queue deleted): nothing is kept
        elif outcome is Outcome.ACCEPTED:
            q._forget(msg)
            if msg.stored and self.store is not None:
                self.store.delete(self.qid, msg.seq)
        elif outcome is Outcome.REJECTED:
            q._remove(msg, "rejected")  # dead-lettered (or dropped) exactly as before the move
        elif (
            modified is not None
            and modified.delivery_failed
            and q.options.delivery_limit is not None
            and msg.delivery_count + 1 > q.options.delivery_limit
        ):
            msg.delivery_count += 1
            q._remove(msg, "delivery_limit")  # as the queue would have (x-delivery-limit)
        else:
            # Released or modified: on to the new leader, with its delivery count (the
            # "undeliverable here" mark belongs to this node's consumers and does not travel).
            if modified is not None and modified.delivery_failed:
                msg.delivery_count += 1
            q._forget(msg)
            msg.redelivered = True
            self._pending.append(msg)
            self._schedule_pump()
            return
        self._check_done()

    # -- forwarding ---------------------------------------------------------------------------

    def _schedule_pump(self) -> None:
        # Never forward from inside a ledger callback or a settlement: the caller may be in the
        # middle of walking its own structures.
        if not self._pump_scheduled and not self.done:
            self._pump_scheduled = True
            asyncio.get_running_loop().call_soon(self._pump)

    def _pump(self) -> None:
        self._pump_scheduled = False
        if self.done or self._retry is not None or self._probing:
            return
        target = self.resolve()
        if target is None:
            self.abort("the queue was deleted")
            return
        if target is not self._serving and (self._pending or self._more):
            self._probe(target)
            return
        ledger = self.ledger
        inflight = self._inflight
        pending = self._pending
        now = time.time()
        while len(inflight) < self.window:
            if not pending:
                if self._more and not self._reading:
                    self._read()
                break
            msg = pending[0]
            if msg.expires and msg.expires <= now:
                pending.popleft()
                self._expired(msg)
                continue
            out = msg.copy()
            # The same queue's message, elsewhere: it keeps its delivery state (and, to a queue
            # on this node, its deadline; a forwarding record does not carry one).
            out.redelivered = msg.redelivered
            out.delivery_count = msg.delivery_count
            out.expires = msg.expires
            token = target.enqueue(out)
            if token > 0 and ledger is not None and token <= ledger.committed:
                token = REJECTED if ledger.did_fail(token) else 0  # resolved already
            if token == REJECTED or token < 0:
                self.last_error = f"the leader of queue '{self.name}' refused or cannot be reached"
                self._retry_later()
                break
            pending.popleft()
            if not token or ledger is None or token <= ledger.committed:
                self._confirmed(msg)
            else:
                if inflight and token < inflight[-1][0]:
                    self._unordered = True  # a store batch's token, older than a forward's
                inflight.append((token, msg))
        if inflight and ledger is not None:
            ledger.watchers.add(self)
        self._check_done()

    def _probe(self, target: QueueHandle) -> None:
        """Forward to `target` only once it serves the queue (see the module docstring): a
        remote handle's stats() fails until the leader there has a queue of its own."""
        if target.led_here:
            self._serving = target  # a queue on this node (moved back here)
            self._schedule_pump()
            return
        answer = target.stats()
        self._probing = True

        def probed(fut: asyncio.Future) -> None:
            self._probing = False
            if self.done:
                return
            if fut.cancelled() or fut.exception() is not None:
                error = "cancelled" if fut.cancelled() else fut.exception()
                self.last_error = f"the new leader does not serve the queue yet: {error}"
                self._retry_later(self._probe_delay)
                self._probe_delay = min(RETRY, self._probe_delay * 2)
                return
            self._probe_delay = PROBE_RETRY
            if self.resolve() is target:
                self._serving = target
            self._pump()

        answer.add_done_callback(probed)

    def _read(self) -> None:
        self._reading = True
        self.store.page_in(self.qid, self._after, PAGE, self._rows)

    def _read_done(self) -> bool:
        """A read came back: False when its rows are to be dropped (done, or purged meanwhile)."""
        self._reading = False
        if self.done:
            return False
        if self._ignore_read:
            self._ignore_read = False
            self._check_done()
            return False
        return True

    def _rows(self, rows: list[tuple]) -> None:
        if not self._read_done():
            return
        for seq, _transient, route, props, body, expires in rows:
            msg = Message.from_stored(route, props, body)
            msg.seq = seq
            msg.stored = True
            msg.expires = expires / 1000.0 if expires else 0.0
            self._pending.append(msg)
        if rows:
            self._after = rows[-1][0]
        self._unread = max(0, self._unread - len(rows))
        if len(rows) < PAGE:
            self._more = False
        self._pump()

    # LedgerWatcher
    def store_committed(self, committed: int, failed: frozenset[int]) -> None:
        inflight = self._inflight
        if not inflight:
            return
        if failed or self._unordered:
            # Every failure is reported once: look at every entry, not just the front.
            done = [e for e in inflight if e[0] <= committed]
            if not done:
                return
            inflight[:] = [e for e in inflight if e[0] > committed]
            self._unordered = any(
                inflight[i][0] < inflight[i - 1][0] for i in range(1, len(inflight))
            )
        else:
            n = 0
            while n < len(inflight) and inflight[n][0] <= committed:
                n += 1
            if not n:
                return
            done = inflight[:n]
            del inflight[:n]
        redo = []
        for token, msg in done:
            if token in failed:
                redo.append(msg)
            else:
                self._confirmed(msg)
        if not inflight and self.ledger is not None:
            self.ledger.watchers.discard(self)
        if redo:
            self.last_error = (self.ledger.last_error if self.ledger else None) or "forward failed"
            self._pending.extendleft(reversed(redo))
            self._retry_later()
        else:
            self._schedule_pump()

    def _expired(self, msg: Message) -> None:
        """Its TTL ran out before it left: it leaves as it would have from the queue here
        (dead-lettered, or dropped), rather than live again on the new leader."""
        if msg.stored and self.store is not None:
            self.store.delete(self.qid, msg.seq)
        q = self.queue
        if q is not None and q.dead_letter is not None:
            q.dead_letter(q, msg, "expired")
        elif q is None and self.dead_letter is not None:
            self.dead_letter(msg, "expired")

    def _confirmed(self, msg: Message) -> None:
        """The new leader has it (committed, for a persistent message): it leaves this node."""
        self.moved += 1
        if msg.stored and self.store is not None:
            self.store.delete(self.qid, msg.seq)

    def _retry_later(self, delay: float = RETRY) -> None:
        if self._retry is None and not self.done:
            self._retry = asyncio.get_running_loop().call_later(delay, self._retry_now)

    def _retry_now(self) -> None:
        self._retry = None
        self._pump()

    # -- the end --------------------------------------------------------------------------------

    def _check_done(self) -> None:
        if (
            self.done
            or self._pending
            or self._inflight
            or self._more
            or self._reading
            or (self.queue is not None and self.queue.unacked > 0)
        ):
            return
        if self.store is None or not self.qid:
            self._finish()
            return
        # Before the queue's rows go: read what the store still holds of it (after the deletes
        # asked so far). Counts can be off (a failed write, a failed read); the store cannot.
        self._reading = True
        self.store.page_in(self.qid, 0, PAGE, self._verified)

    def _verified(self, rows: list[tuple]) -> None:
        if not self._read_done():
            return
        if not rows:
            self._finish()
            return
        log.warning(
            "queue '%s' in vhost '%s': %d stored message(s) not handed over yet, sending them",
            self.name,
            self.vhost,
            len(rows),
        )
        self._more = len(rows) == PAGE
        self._after = rows[-1][0]
        self._rows(rows)

    def _finish(self) -> None:
        self.done = True
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if self.ledger is not None:
            self.ledger.watchers.discard(self)
        if self.store is not None and self.qid:
            self.store.drop_queue(self.qid)
        self.on_done(self)

    def purge(self) -> int:
        """The queue was purged on its new leader: what has not left here yet goes too. Like a
        purge, it leaves deliveries still unsettled; messages already forwarded and awaiting the
        new leader's confirm arrive after the purge. Returns how many were dropped."""
        if self.done:
            return 0
        n = len(self._pending) + (self._unread if self._more else 0)
        for msg in self._pending:
            if msg.stored and self.store is not None:
                self.store.delete(self.qid, msg.seq)
        self._pending.clear()
        if self.store is not None and self.qid:
            # Rows not read yet, and those a read under way returns (ignored by _rows).
            self.store.purge_after(self.qid, self._after)
            self._ignore_read = self._reading
        self._more = False
        self._unread = 0
        log.info(
            "queue '%s' in vhost '%s' purged on its new leader: %d message(s) not handed over",
            self.name,
            self.vhost,
            n,
        )
        self._check_done()
        return n

    def abort(self, reason: str) -> None:
        """The queue was deleted: what is left goes with it, as a deleted queue's messages do."""
        if self.done:
            return
        log.info("handover of queue '%s' in vhost '%s' stopped: %s", self.name, self.vhost, reason)
        self.aborted = True
        self.last_error = reason
        self._pending.clear()
        self._inflight = []
        self._more = False
        self._finish()
