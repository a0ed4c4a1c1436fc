"""`ReplicatedRemoteQueue`: a node's handle of a replicated queue another node leads.

It is a RemoteQueue (forwarding does the work) that outlives its leader. While the leader is
unreachable, consumers wait instead of being cancelled, publishes are held instead of nacked,
and basic.get, purge and stats wait too: a failover takes about a second, and a client should
see its answers late, not errors. When the metadata names the new leader
(cluster/replication/queues.py), all of it moves to the new handle (`hand_over`); each held
message's confirm then follows the new leader's. What the old leader had not confirmed when it
went is nacked by forwarding (the publisher sends it again; it may arrive twice, never not at
all). Held publishes that find no leader within HOLD_FOR seconds, or beyond HOLD_MAX of them, are
nacked. When the same leader turns out reachable again (a broken stream, a short partition),
the same happens through this handle (`peer_up`).

Deliveries made through the old leader stay settleable ("orphans"): their settlements go to the
new leader by seq (`settle_earlier`), held until there is one, so an acknowledgement made across
a failover still counts. Acks and rejects sent to the old leader in the last RESEND_WINDOW
seconds go to the new leader again: the old one may have died (or paused) before committing them. Seqs are never reused across epochs (member.py), so a late settlement
can only name the message it was meant for.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any

from merpati.cluster.forwarding.remote_queue import RemoteQueue
from merpati.node.core.message import Message
from merpati.node.core.outcome import Modified, Outcome
from merpati.node.core.queue import REJECTED
from merpati.node.metadata.state import MetadataError

HOLD_FOR = 30.0
HOLD_MAX = 100_000
# Settlements sent to the leader are sent again to the next one (settle_earlier) when they were
# made in the last RESEND_WINDOW seconds: a leader that dies or pauses may never have committed
# them, and an acknowledged message must not come back. Longer than failure detection takes.
RESEND_WINDOW = 10.0
RESEND_MAX = 100_000
# Only the settlements that remove a message are sent again: doing so twice changes nothing,
# where a failed delivery counted twice would bring the delivery limit closer.
_RESENT = (Outcome.ACCEPTED, Outcome.REJECTED)


class ReplicatedRemoteQueue(RemoteQueue):
    counts_requeues = True  # quorum queues count a 0-9-1 requeue as a failed delivery

    def __init__(self, vhost: str, name: str, leader: str, links: Any, ledger: Any) -> None:
        self.ledger = ledger
        self._waiting: list[Any] = []  # consumers while no leader answers
        self._held: list[tuple[Message, bool, int]] = []  # (message, confirm, ledger token)
        self._asks: list[tuple[str, tuple, asyncio.Future]] = []  # get, purge, stats
        self._hold_timer: asyncio.TimerHandle | None = None
        # Deliveries through a leader whose stream is gone, by seq, and their settlements while
        # no leader answers.
        self._orphans: dict[int, Message] = {}
        self._pending: list[tuple[int, Outcome, Modified | None]] = []
        self._successor: Any = None  # the handle that took over (hand_over)
        self._through: dict[int, Message] = {}  # basic.get answers the successor gave
        # (time, seq, outcome, delivery failed, undeliverable here) of settlements sent.
        self._sent: deque[tuple[float, int, Outcome, bool, bool]] = deque(maxlen=RESEND_MAX)
        super().__init__(vhost, name, leader, links)

    # -- without a leader -------------------------------------------------------------------------

    def peer_down(self, peer: Any) -> None:
        for seq, (_sub, msg) in self.outstanding.items():
            self._orphans[seq] = msg
        super().peer_down(peer)

    def leader_lost(self, consumer: Any, reason: str) -> None:
        self._waiting.append(consumer)

    def subscribe_without_leader(self, consumer: Any) -> None:
        self._waiting.append(consumer)

    def unsubscribe(self, consumer: Any) -> None:
        if consumer in self._waiting:
            self._waiting.remove(consumer)
            return
        super().unsubscribe(consumer)

    def enqueue_without_leader(self, msg: Message, confirm: bool) -> int:
        if len(self._held) >= HOLD_MAX:
            return REJECTED
        token = self.ledger.allocate() if confirm else 0
        self._held.append((msg, confirm, token))
        self._arm_hold()
        return token

    def _arm_hold(self) -> None:
        if self._hold_timer is None:
            self._hold_timer = asyncio.get_running_loop().call_later(HOLD_FOR, self._give_up)

    def _give_up(self) -> None:
        self._hold_timer = None
        why = f"queue '{self.name}' in vhost '{self.vhost}' has had no leader for {HOLD_FOR:.0f} s"
        held, self._held = self._held, []
        tokens = [t for _m, _c, t in held if t]
        if tokens:
            self.ledger.resolve(tokens, ok=False, error=why)
        asks, self._asks = self._asks, []
        for _name, _args, fut in asks:
            if not fut.done():
                fut.set_exception(MetadataError(404, why))

    def _held_ask(self, name: str, *args: Any) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        self._asks.append((name, args, fut))
        self._arm_hold()
        return fut

    def get(self, ack_required: bool) -> asyncio.Future:
        if self._live_peer() is None and not self.deleted:
            return self._held_ask("get", ack_required)
        return super().get(ack_required)

    def purge(self) -> asyncio.Future:
        if self._live_peer() is None and not self.deleted:
            return self._held_ask("purge")
        return super().purge()

    def stats(self) -> asyncio.Future:
        if self._live_peer() is None and not self.deleted:
            return self._held_ask("stats")
        return super().stats()

    # -- settlement -------------------------------------------------------------------------------

    def settle(self, msg: Message, outcome: Outcome, modified: Modified | None = None) -> None:
        seq = msg.seq
        if self._orphans.get(seq) is msg:
            del self._orphans[seq]
            self.settle_earlier([seq], outcome, modified)
        elif self._through.get(seq) is msg:
            del self._through[seq]
            self._successor.settle(msg, outcome, modified)
        else:
            entry = self.outstanding.get(seq)
            if entry is not None and entry[1] is msg and outcome in _RESENT:
                self._note_sent(seq, outcome, modified)
            super().settle(msg, outcome, modified)

    def _note_sent(self, seq: int, outcome: Outcome, modified: Modified | None) -> None:
        now = time.monotonic()
        sent = self._sent
        while sent and sent[0][0] < now - RESEND_WINDOW:
            sent.popleft()
        failed = bool(modified and modified.delivery_failed)
        here = bool(modified and modified.undeliverable_here)
        sent.append((now, seq, outcome, failed, here))

    def release_many(self, msgs: list[Message]) -> None:
        for msg in msgs:
            self.settle(msg, Outcome.RELEASED)

    def settle_earlier(
        self, seqs: list[int], outcome: Outcome, modified: Modified | None = None
    ) -> None:
        if outcome is Outcome.RELEASED:
            return  # the new leader has it ready, or delivered again
        if self._successor is not None:
            self._successor.settle_earlier(seqs, outcome, modified)
        elif self._live_peer() is None:
            self._pending.extend((seq, outcome, modified) for seq in seqs)
        else:
            # Sent to the node that led: it may be that node restarted, leading nothing (see
            # peer_up); on record until the next hand-over.
            if outcome in _RESENT:
                for seq in seqs:
                    self._note_sent(seq, outcome, modified)
            super().settle_earlier(seqs, outcome, modified)

    # -- a leader again -----------------------------------------------------------------------------

    def peer_up(self, peer: Any) -> None:
        """The leader is reachable again without a change of leader."""
        if self.deleted or self._successor is not None or self._live_peer() is not peer:
            return
        consumers = list(self._waiting)
        self._waiting.clear()
        # The leader is live: this handle's methods reach it. But the node that answers may be
        # the old leader restarted, leading nothing until the metadata names a new leader (which
        # may be another node): the acks stay on record for that hand-over.
        self._resume(self, consumers)

    def hand_over(self, new: Any) -> None:
        """The queue has a new leader, reached through `new`: the settlements of deliveries
        made before go there first, then the consumers, held publishes and questions."""
        self._successor = new
        consumers = list(self._waiting)
        self._waiting.clear()
        for seq, (_sub, msg) in self.outstanding.items():
            self._orphans[seq] = msg
        consumers += self.detach_consumers()
        self._resume(new, consumers)

    def _resume(self, to: Any, consumers: list[Any]) -> None:
        """Send what waited for a leader through `to`: first the settlements made while there
        was none and those sent to the old leader lately (it may not have committed them).
        Through this handle itself (peer_up), settle_earlier keeps the acks and rejects on
        record, to be sent again at a hand-over."""
        if self._hold_timer is not None:
            self._hold_timer.cancel()
            self._hold_timer = None
        pending, self._pending = self._pending, []
        batches: dict[tuple[Outcome, bool, bool], list[int]] = {}
        cutoff = time.monotonic() - RESEND_WINDOW
        for at, seq, outcome, failed, here in self._sent:
            if at >= cutoff:
                batches.setdefault((outcome, failed, here), []).append(seq)
        self._sent.clear()
        for seq, outcome, modified in pending:
            failed = bool(modified and modified.delivery_failed)
            here = bool(modified and modified.undeliverable_here)
            batches.setdefault((outcome, failed, here), []).append(seq)
        for (outcome, failed, here), seqs in batches.items():
            to.settle_earlier(seqs, outcome, Modified(failed, here) if failed or here else None)
        for c in consumers:
            c.queue = to
            to.subscribe(c)
        held, self._held = self._held, []
        ledger = self.ledger
        for msg, confirm, token in held:
            result = to.enqueue(msg, confirm)
            if not token:
                continue
            if result < 0:
                ledger.resolve([token], ok=False, error=f"queue '{self.name}' refused it")
            elif result == 0:
                ledger.resolve([token], ok=True)
            else:
                ledger.forward(result, token)
        asks, self._asks = self._asks, []
        for name, args, fut in asks:
            answer = getattr(to, name)(*args)
            answer.add_done_callback(lambda a, f=fut, n=name: self._answered(a, f, n))

    def _answered(self, answer: asyncio.Future, fut: asyncio.Future, name: str) -> None:
        if fut.done():
            return
        if answer.cancelled():
            fut.cancel()
        elif answer.exception() is not None:
            fut.set_exception(answer.exception())
        else:
            result = answer.result()
            if name == "get" and self._successor is not None and result[0] is not None:
                self._through[result[0].seq] = result[0]
            fut.set_result(result)

    def detach_consumers(self) -> list[Any]:
        """Give up the consumers subscribed through the old leader (their streams close, the
        old leader releases what they held) without cancelling them."""
        self.deleted = True
        consumers = []
        subs = list(self._subs.values())
        self._subs.clear()
        for sub in subs:
            sub.close()
            if sub.active:
                consumers.append(sub.consumer)
        self.outstanding.clear()
        self.unacked = 0
        if self._peer is not None:
            self._peer.queues.discard(self)
        return consumers
