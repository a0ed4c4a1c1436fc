"""ReplicatedRemoteQueue without sockets: what waits for a leader, and where it goes."""

from __future__ import annotations

import asyncio

from merpati.cluster.replication.remote import ReplicatedRemoteQueue
from merpati.node.core.ledger import ConfirmLedger
from merpati.node.core.message import Message
from merpati.node.core.outcome import Outcome
from merpati.node.core.queue import resolved


class FakePeer:
    def __init__(self) -> None:
        self.down = False
        self.closed = False
        self.congested = False
        self.queues: set = set()


class FakeLinks:
    def __init__(self, peer: FakePeer) -> None:
        self._peer = peer

    def peer(self, node: str) -> FakePeer:
        return self._peer


class NewLeader:
    """The handle the new leader is reached through: records what it is given."""

    def __init__(self, ledger: ConfirmLedger) -> None:
        self.ledger = ledger
        self.earlier: list[tuple[list[int], Outcome]] = []
        self.subscribed: list = []
        self.enqueued: list[bytes] = []
        self.tokens: list[int] = []

    def settle_earlier(self, seqs, outcome, modified=None) -> None:
        self.earlier.append((list(seqs), outcome))

    def subscribe(self, consumer) -> None:
        self.subscribed.append(consumer)

    def enqueue(self, msg: Message, confirm: bool = True) -> int:
        self.enqueued.append(msg.body)
        token = self.ledger.allocate()
        self.tokens.append(token)
        return token

    def get(self, ack_required: bool) -> asyncio.Future:
        m = msg(b"got")
        m.seq = 77
        return resolved((m, 0))


class Consumer:
    queue = None


def msg(body: bytes, seq: int = 0) -> Message:
    m = Message("", "q", None, b"\x00\x00", body)
    m.seq = seq
    return m


def leaderless() -> tuple[ReplicatedRemoteQueue, FakePeer, ConfirmLedger]:
    peer = FakePeer()
    ledger = ConfirmLedger()
    rq = ReplicatedRemoteQueue("/", "qq", "n1", FakeLinks(peer), ledger)
    peer.down = True
    return rq, peer, ledger


def test_deliveries_of_the_old_leader_settle_on_the_new_one_first() -> None:
    async def run() -> None:
        peer = FakePeer()
        ledger = ConfirmLedger()
        rq = ReplicatedRemoteQueue("/", "qq", "n1", FakeLinks(peer), ledger)
        held = [msg(b"a", 5), msg(b"b", 6), msg(b"c", 7)]
        for m in held:  # delivered through the old leader (as a basic.get would be)
            rq.outstanding[m.seq] = (None, m)
        peer.down = True
        rq.peer_down(peer)
        rq.settle(held[0], Outcome.ACCEPTED)  # while no leader answers: held
        rq.settle(held[1], Outcome.RELEASED)  # released: the new leader has it anyway
        consumer = Consumer()
        rq.subscribe(consumer)  # waits
        new = NewLeader(ledger)
        rq.hand_over(new)
        assert new.earlier == [([5], Outcome.ACCEPTED)]
        assert new.subscribed == [consumer] and consumer.queue is new
        rq.settle(held[2], Outcome.ACCEPTED)  # after: straight to the new leader
        assert new.earlier[-1] == ([7], Outcome.ACCEPTED)
        rq.settle(held[2], Outcome.ACCEPTED)  # twice: nothing more
        assert len(new.earlier) == 2

    asyncio.run(run())


def test_held_publishes_are_confirmed_when_the_new_leader_confirms_them() -> None:
    async def run() -> None:
        rq, _peer, ledger = leaderless()
        t1 = rq.enqueue(msg(b"x"))
        t2 = rq.enqueue(msg(b"y"))
        assert t1 > 0 and t2 > 0 and ledger.committed < t1
        new = NewLeader(ledger)
        rq.hand_over(new)
        assert new.enqueued == [b"x", b"y"]
        waiter = ledger.wait(t2)
        ledger.resolve(new.tokens, ok=True)
        await asyncio.wait_for(waiter, 1)
        assert ledger.committed >= t2

    asyncio.run(run())


def test_held_publishes_and_questions_fail_after_the_hold_time() -> None:
    async def run() -> None:
        import merpati.cluster.replication.remote as remote

        remote.HOLD_FOR, old = 0.05, remote.HOLD_FOR
        try:
            rq, _peer, ledger = leaderless()
            token = rq.enqueue(msg(b"x"))
            asked = rq.get(True)
            waiter = ledger.wait(token)
            await asyncio.sleep(0.1)
            assert ledger.committed >= token
            assert waiter.exception() is not None  # nacked: the publisher sends it again
            assert "no leader" in str(asked.exception())
        finally:
            remote.HOLD_FOR = old

    asyncio.run(run())


def test_a_basic_get_asked_meanwhile_is_answered_by_the_new_leader_and_settles_there() -> None:
    async def run() -> None:
        rq, _peer, ledger = leaderless()
        asked = rq.get(True)
        assert not asked.done()
        new = NewLeader(ledger)
        settled = []
        new.settle = lambda m, outcome, modified=None: settled.append((m.seq, outcome))
        rq.hand_over(new)
        await asyncio.sleep(0)
        got, _left = asked.result()
        assert got.body == b"got"
        rq.settle(got, Outcome.ACCEPTED)
        assert settled == [(77, Outcome.ACCEPTED)]

    asyncio.run(run())


def test_acks_sent_to_the_old_leader_lately_are_sent_to_the_new_one_again() -> None:
    async def run() -> None:
        peer = FakePeer()
        ledger = ConfirmLedger()
        rq = ReplicatedRemoteQueue("/", "qq", "n1", FakeLinks(peer), ledger)
        sent: list = []
        # The old leader's stream: what a consumer subscription would send over it.
        rq.outstanding = {}
        for seq in (5, 6, 7):
            m = msg(b"m", seq)

            class Sub:
                def settled(self, seq, outcome, modified, sent=sent) -> None:
                    sent.append((seq, outcome))

            rq.outstanding[seq] = (Sub(), m)
        msgs = {seq: e[1] for seq, e in rq.outstanding.items()}
        rq.settle(msgs[5], Outcome.ACCEPTED)
        rq.settle(msgs[6], Outcome.RELEASED)  # back in the queue anyway: not sent again
        rq.settle(msgs[7], Outcome.REJECTED)
        assert [s for s, _o in sent] == [5, 6, 7]  # sent to the old leader as usual
        peer.down = True
        rq.peer_down(peer)
        new = NewLeader(ledger)
        rq.hand_over(new)
        assert sorted(new.earlier) == [([5], Outcome.ACCEPTED), ([7], Outcome.REJECTED)]

    asyncio.run(run())


def test_acks_sent_to_a_restarted_old_leader_go_to_the_new_leader_too() -> None:
    # The old leader is killed and restarted before the failover is decided: its node answers
    # again (peer_up) but leads nothing, so the acks it is sent are lost there; the next leader
    # must still get them.
    async def run() -> None:
        peer = FakePeer()
        calls: list = []

        async def call(method, req) -> None:
            calls.append((method, list(req.settlement.seqs)))

        peer.call = call
        ledger = ConfirmLedger()
        rq = ReplicatedRemoteQueue("/", "qq", "n1", FakeLinks(peer), ledger)
        held = [msg(b"a", 5), msg(b"b", 6)]
        for m in held:
            rq.outstanding[m.seq] = (None, m)
        peer.down = True
        rq.peer_down(peer)
        rq.settle(held[0], Outcome.ACCEPTED)  # while no leader answers
        peer.down = False
        rq.peer_up(peer)  # the restarted process answers
        await asyncio.sleep(0)
        assert calls == [("Settle", [5])]
        new = NewLeader(ledger)
        rq.hand_over(new)  # the metadata names the new leader
        assert new.earlier == [([5], Outcome.ACCEPTED)]

    asyncio.run(run())


def test_an_ack_made_after_the_restarted_old_leader_answers_goes_to_the_new_leader_too() -> None:
    async def run() -> None:
        peer = FakePeer()
        calls: list = []

        async def call(method, req) -> None:
            calls.append((method, list(req.settlement.seqs)))

        peer.call = call
        rq = ReplicatedRemoteQueue("/", "qq", "n1", FakeLinks(peer), ConfirmLedger())
        m = msg(b"a", 5)
        rq.outstanding[m.seq] = (None, m)
        peer.down = True
        rq.peer_down(peer)
        peer.down = False
        rq.peer_up(peer)
        rq.settle(m, Outcome.ACCEPTED)  # to the restarted process, which leads nothing
        await asyncio.sleep(0)
        assert calls == [("Settle", [5])]
        new = NewLeader(rq.ledger)
        rq.hand_over(new)
        assert new.earlier == [([5], Outcome.ACCEPTED)]

    asyncio.run(run())
