"""node.core.queue.LocalQueue with fake consumers."""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from merpati.node.core.message import Message
from merpati.node.core.outcome import Modified, Outcome
from merpati.node.core.queue import LocalQueue


class FakeConsumer:
    def __init__(
        self, tag: str, room: int = 10**9, ack: bool = True, exclusive: bool = False
    ) -> None:
        self.tag = tag
        self.exclusive = exclusive
        self.room = room
        self.ack = ack
        self.got: list[Message] = []
        self.cancelled_with: list[str] = []

    def can_take(self) -> bool:
        return self.room > 0

    def backpressured(self) -> bool:
        return False

    def deliver(self, queue, msg: Message) -> bool:
        assert self.room > 0, "delivered to a consumer without room"
        self.room -= 1
        self.got.append(msg)
        return self.ack

    def cancelled(self, queue, reason: str) -> None:
        self.cancelled_with.append(reason)

    def bodies(self) -> list[bytes]:
        return [m.body for m in self.got]


def msg(body: bytes | str) -> Message:
    if isinstance(body, str):
        body = body.encode()
    return Message("ex", "rk", None, b"\x00\x00", body)


def fill(q: LocalQueue, n: int) -> list[Message]:
    msgs = [msg(str(i)) for i in range(n)]
    for m in msgs:
        q.enqueue(m)
    return msgs


def ready_bodies(q: LocalQueue) -> list[bytes]:
    out = []
    while (m := q.get_now(False)) is not None:
        out.append(m.body)
    return out


def test_enqueue_without_consumers_then_get_in_order():
    q = LocalQueue("/", "q")
    fill(q, 3)
    assert q.stats_now() == (3, 0)
    assert q.message_count == 3
    assert ready_bodies(q) == [b"0", b"1", b"2"]
    assert q.get_now(True) is None
    assert q.unacked == 0


def test_get_with_ack_counts_unacked():
    q = LocalQueue("/", "q")
    fill(q, 2)
    m = q.get_now(True)
    assert q.unacked == 1 and q.message_count == 1
    q.settle(m, Outcome.ACCEPTED)
    assert q.unacked == 0 and q.message_count == 1


def test_round_robin_between_consumers_on_enqueue():
    q = LocalQueue("/", "q")
    a, b, c = FakeConsumer("a"), FakeConsumer("b"), FakeConsumer("c")
    for x in (a, b, c):
        q.subscribe(x)
    fill(q, 9)
    assert a.bodies() == [b"0", b"3", b"6"]
    assert b.bodies() == [b"1", b"4", b"7"]
    assert c.bodies() == [b"2", b"5", b"8"]
    assert q.unacked == 9 and q.message_count == 0


def test_round_robin_on_kick_from_backlog():
    q = LocalQueue("/", "q")
    fill(q, 6)
    a, b = FakeConsumer("a", room=0), FakeConsumer("b", room=0)
    q.subscribe(a)
    q.subscribe(b)
    assert q.message_count == 6
    a.room = b.room = 10
    q.kick()
    assert sorted(a.bodies() + b.bodies()) == [str(i).encode() for i in range(6)]
    assert len(a.got) == len(b.got) == 3


def test_subscribe_drains_the_backlog():
    q = LocalQueue("/", "q")
    fill(q, 3)
    a = FakeConsumer("a")
    q.subscribe(a)
    assert a.bodies() == [b"0", b"1", b"2"]
    assert q.had_consumers


def test_can_take_is_respected():
    q = LocalQueue("/", "q")
    a, b = FakeConsumer("a", room=1), FakeConsumer("b", room=2)
    q.subscribe(a)
    q.subscribe(b)
    fill(q, 6)
    assert len(a.got) == 1 and len(b.got) == 2
    assert q.message_count == 3
    assert q.unacked == 3
    # Room appears: the backlog goes out in order.
    a.room = 1
    q.kick()
    assert a.bodies() == [b"0", b"3"]
    b.room = 5
    q.kick()
    assert b.bodies() == [b"1", b"2", b"4", b"5"]
    assert q.message_count == 0


def test_single_consumer_without_room_queues():
    q = LocalQueue("/", "q")
    a = FakeConsumer("a", room=0)
    q.subscribe(a)
    fill(q, 2)
    assert a.got == [] and q.message_count == 2


def test_messages_do_not_overtake_the_backlog():
    q = LocalQueue("/", "q")
    a = FakeConsumer("a", room=1)
    q.subscribe(a)
    fill(q, 3)  # "0" delivered, "1" and "2" wait
    a.room = 1
    q.enqueue(msg("3"))  # must not jump ahead of "1"
    assert a.bodies() == [b"0"]
    q.kick()
    assert a.bodies() == [b"0", b"1"]


def test_no_ack_deliveries_are_not_counted_unacked():
    q = LocalQueue("/", "q")
    q.subscribe(FakeConsumer("a", ack=False))
    fill(q, 3)
    assert q.unacked == 0


def test_released_messages_return_to_their_original_position():
    q = LocalQueue("/", "q")
    msgs = fill(q, 5)
    m0, m1, m2 = q.get_now(True), q.get_now(True), q.get_now(True)
    assert [m0.body, m1.body, m2.body] == [b"0", b"1", b"2"]
    q.settle(m2, Outcome.RELEASED)
    q.settle(m0, Outcome.RELEASED)
    q.settle(m1, Outcome.ACCEPTED)
    assert q.unacked == 0
    got = []
    while (m := q.get_now(False)) is not None:
        got.append((m.body, m.redelivered))
    assert got == [(b"0", True), (b"2", True), (b"3", False), (b"4", False)]
    assert all(m.delivery_count == 0 for m in msgs)


def test_released_message_goes_to_a_consumer_before_younger_ones():
    q = LocalQueue("/", "q")
    a = FakeConsumer("a", room=2)
    q.subscribe(a)
    fill(q, 4)
    first = a.got[0]
    q.settle(first, Outcome.RELEASED)  # no room: waits at the front
    a.room = 3
    q.kick()
    assert a.bodies() == [b"0", b"1", b"0", b"2", b"3"]
    assert a.got[2].redelivered and not a.got[3].redelivered


def test_release_many_restores_order():
    q = LocalQueue("/", "q")
    fill(q, 4)
    taken = [q.get_now(True) for _ in range(3)]
    q.release_many(list(reversed(taken)))
    assert q.unacked == 0
    assert ready_bodies(q) == [b"0", b"1", b"2", b"3"]


def test_modified_charges_delivery_count_only_when_failed():
    q = LocalQueue("/", "q")
    fill(q, 2)
    a, b = q.get_now(True), q.get_now(True)
    q.settle(a, Outcome.MODIFIED, Modified(delivery_failed=True))
    q.settle(b, Outcome.MODIFIED, Modified(delivery_failed=False))
    assert (a.delivery_count, a.redelivered) == (1, True)
    assert (b.delivery_count, b.redelivered) == (0, True)
    assert q.message_count == 2


def test_rejected_is_dead_lettered_or_dropped():
    q = LocalQueue("/", "q")
    fill(q, 2)
    m = q.get_now(True)
    q.settle(m, Outcome.REJECTED)
    assert q.message_count == 1 and q.unacked == 0
    lettered = []
    q.dead_letter = lambda queue, message, reason: lettered.append((queue, message, reason))
    m = q.get_now(True)
    q.settle(m, Outcome.REJECTED)
    assert lettered == [(q, m, "rejected")]
    assert q.message_count == 0


def test_purge():
    q = LocalQueue("/", "q")
    fill(q, 5)
    m = q.get_now(True)
    q.settle(q.get_now(True), Outcome.RELEASED)
    assert q.purge_now() == 4
    assert q.stats_now() == (0, 0)
    assert q.get_now(False) is None
    # Unacked deliveries survive a purge, as in RabbitMQ, and can still be settled.
    assert q.unacked == 1
    q.settle(m, Outcome.RELEASED)
    assert q.message_count == 1
    assert q.purge_now() == 1
    assert q.purge_now() == 0


def test_delete_cancels_consumers():
    q = LocalQueue("/", "q")
    a, b = FakeConsumer("a", room=1), FakeConsumer("b", room=1)
    q.subscribe(a)
    q.subscribe(b)
    fill(q, 5)
    assert q.delete("deleted") == 3
    assert a.cancelled_with == ["deleted"] and b.cancelled_with == ["deleted"]
    assert q.deleted and q.stats_now() == (0, 0)
    # Late settlements and kicks are ignored.
    q.settle(a.got[0], Outcome.RELEASED)
    q.release_many([b.got[0]])
    q.kick()
    assert q.message_count == 0


def test_exclusive_consumer_flag():
    q = LocalQueue("/", "q")
    q.subscribe(FakeConsumer("a"))
    assert not q.has_exclusive_consumer()
    q.subscribe(FakeConsumer("b", exclusive=True))
    assert q.has_exclusive_consumer()


def test_auto_delete_via_on_unused():
    q = LocalQueue("/", "q", auto_delete=True)
    calls = []
    q.on_unused = calls.append
    a, b = FakeConsumer("a"), FakeConsumer("b")
    q.subscribe(a)
    q.subscribe(b)
    q.unsubscribe(a)
    assert calls == []
    q.unsubscribe(b)
    assert calls == [q]
    q.unsubscribe(b)  # not subscribed any more: nothing happens
    assert calls == [q]
    assert q.consumers == []


def test_no_on_unused_without_auto_delete():
    q = LocalQueue("/", "q")
    calls = []
    q.on_unused = calls.append
    a = FakeConsumer("a")
    q.subscribe(a)
    q.unsubscribe(a)
    assert calls == []


def test_unsubscribed_consumer_gets_nothing_more():
    q = LocalQueue("/", "q")
    a, b = FakeConsumer("a"), FakeConsumer("b")
    q.subscribe(a)
    q.subscribe(b)
    q.unsubscribe(a)
    fill(q, 3)
    assert a.got == [] and len(b.got) == 3


# A small model-based check: whatever the interleaving, nothing is lost or duplicated, order holds.
actions = st.lists(
    st.one_of(
        st.tuples(st.just("enqueue")),
        st.tuples(st.just("room"), st.integers(0, 2), st.integers(0, 3)),
        st.tuples(
            st.just("settle"),
            st.integers(0, 2),
            st.sampled_from([Outcome.ACCEPTED, Outcome.RELEASED, Outcome.REJECTED]),
        ),
        st.tuples(st.just("get"), st.booleans()),
        st.tuples(st.just("settle_got"), st.sampled_from([Outcome.ACCEPTED, Outcome.RELEASED])),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(actions)
def test_messages_are_conserved(steps):
    q = LocalQueue("/", "q")
    consumers = [FakeConsumer(str(i), room=0) for i in range(3)]
    for x in consumers:
        q.subscribe(x)
    settled = [0 for _ in consumers]  # how many of c.got were settled (oldest first)
    got_pending: list[Message] = []
    gone = 0
    n = 0
    for step in steps:
        if step[0] == "enqueue":
            q.enqueue(msg(str(n)))
            n += 1
        elif step[0] == "room":
            consumers[step[1]].room += step[2]
            q.kick()
        elif step[0] == "settle":
            i, outcome = step[1], step[2]
            c = consumers[i]
            if settled[i] < len(c.got):
                m = c.got[settled[i]]
                settled[i] += 1
                q.settle(m, outcome)
                if outcome is not Outcome.RELEASED:
                    gone += 1
        elif step[0] == "get":
            m = q.get_now(step[1])
            if m is not None:
                if step[1]:
                    got_pending.append(m)
                else:
                    gone += 1
        elif step[0] == "settle_got" and got_pending:
            q.settle(got_pending.pop(0), step[1])
            if step[1] is not Outcome.RELEASED:
                gone += 1
        in_flight = sum(len(c.got) - settled[i] for i, c in enumerate(consumers)) + len(got_pending)
        assert q.unacked == in_flight
        assert q.message_count + in_flight + gone == n
        assert all(c.room >= 0 for c in consumers)
    # What is still ready comes out oldest first, each message once.
    seqs = [m.seq for m in iter(lambda: q.get_now(False), None)]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


# -- settle_earlier: a replicated queue's new leader settles its predecessor's deliveries --------


class RecordingStore:
    """Every message kept (as a replicated queue's leader store); deletes recorded."""

    keeps_every_message = True

    def __init__(self) -> None:
        self.deleted: list[int] = []
        self.counts: list[tuple[int, int]] = []  # (seq, delivery count) as recorded

    def queue_id(self, vhost: str, name: str, durable: bool) -> int:
        return 1

    def set_delivery_count(self, qid: int, seq: int, count: int) -> None:
        self.counts.append((seq, count))

    def append(self, qid, seq, transient, route, props, body, expires=0.0) -> int:
        return 0

    def delete(self, qid: int, seq: int) -> None:
        self.deleted.append(seq)

    def mark_delivered(self, qid: int, seq: int) -> None:
        pass


def in_loop(test):
    """Run `test` inside an event loop (the queue arms timers)."""

    def run() -> None:
        async def main() -> None:
            test()

        asyncio.run(main())

    run.__name__ = test.__name__
    return run


def inherited(
    n: int, limit: int | None = None, counts: dict[int, int] | None = None
) -> tuple[LocalQueue, RecordingStore]:
    """A new leader's queue holding n messages (seqs 1..n) its predecessor had delivered
    (`counts`: their delivery counts, as the replica's log recorded them)."""
    store = RecordingStore()
    args = {"x-queue-type": "quorum"}
    if limit is not None:
        args["x-delivery-limit"] = limit
    q = LocalQueue("/", "qq", durable=True, arguments=args, store=store)
    rows = [(i, False, b"\x00\x00", b"\x00\x00", b"m%d" % i, 0) for i in range(1, n + 1)]
    q.recover(rows, n, n, n, sum(len(r[4]) for r in rows), counts)
    return q, store


@in_loop
def test_an_ack_of_an_earlier_delivery_removes_the_ready_message():
    q, store = inherited(3)
    q.settle_earlier([2], Outcome.ACCEPTED)
    assert store.deleted == [2]
    assert ready_bodies(q) == [b"m1", b"m3"]


@in_loop
def test_a_release_or_plain_modify_of_an_earlier_delivery_changes_nothing():
    q, store = inherited(2)
    q.settle_earlier([1], Outcome.RELEASED)
    q.settle_earlier([1], Outcome.MODIFIED, Modified(undeliverable_here=True))
    assert store.deleted == [] and q.message_count == 2


@in_loop
def test_a_failed_earlier_delivery_counts_toward_the_delivery_limit():
    q, store = inherited(1, limit=1)
    failed = Modified(delivery_failed=True)
    q.settle_earlier([1], Outcome.MODIFIED, failed)
    assert q.message_count == 1  # one failure: within the limit
    q.settle_earlier([1], Outcome.MODIFIED, failed)
    assert q.message_count == 0 and store.deleted == [1]


@in_loop
def test_a_new_leader_counts_on_from_the_recovered_delivery_counts():
    """The counts a replicated queue's log kept come back with the messages: two failures
    before the failover and one after pass a limit of 2."""
    q, store = inherited(2, limit=2, counts={1: 2})
    assert [m.delivery_count for m in q._ready] == [2, 0]
    c = FakeConsumer("c")
    q.subscribe(c)
    first, second = c.got
    q.settle(first, Outcome.MODIFIED, Modified(delivery_failed=True))
    assert store.deleted == [1] and store.counts == []  # over the limit: gone, not counted
    q.settle(second, Outcome.MODIFIED, Modified(delivery_failed=True))
    assert store.counts == [(2, 1)] and second.delivery_count == 1


@in_loop
def test_only_a_failed_delivery_records_a_count():
    q, store = inherited(1)
    c = FakeConsumer("c")
    q.subscribe(c)
    q.settle(c.got[-1], Outcome.RELEASED)
    q.settle(c.got[-1], Outcome.MODIFIED, Modified(undeliverable_here=False))
    assert store.counts == []
    q.settle(c.got[-1], Outcome.MODIFIED, Modified(delivery_failed=True))
    q.settle_earlier(
        [1], Outcome.MODIFIED, Modified(delivery_failed=True)
    )  # delivered again here: not counted
    q.settle(c.got[-1], Outcome.MODIFIED, Modified(delivery_failed=True))
    assert store.counts == [(1, 1), (1, 2)]


@in_loop
def test_a_classic_queue_records_no_count():
    store = RecordingStore()
    store.keeps_every_message = False  # a classic durable queue's store
    q = LocalQueue("/", "cq", durable=True, store=store)
    c = FakeConsumer("c")
    q.subscribe(c)
    q.enqueue(Message("", "cq", None, b"\x10\x00\x02", b"m"))
    q.settle(c.got[-1], Outcome.MODIFIED, Modified(delivery_failed=True))
    assert c.got[-1].delivery_count == 1 and store.counts == []


@in_loop
def test_an_earlier_reject_dead_letters():
    q, store = inherited(2)
    dead: list[tuple[bytes, str]] = []
    q.dead_letter = lambda queue, m, reason: dead.append((m.body, reason))
    q.settle_earlier([1], Outcome.REJECTED)
    assert dead == [(b"m1", "rejected")] and ready_bodies(q) == [b"m2"]


@in_loop
def test_an_ack_of_an_earlier_delivery_of_a_message_delivered_again_keeps_it_from_coming_back():
    q, store = inherited(2)
    c = FakeConsumer("c")
    q.subscribe(c)
    assert c.bodies() == [b"m1", b"m2"]
    q.settle_earlier([1], Outcome.ACCEPTED)
    assert store.deleted == [1]  # gone from the store at once: a later leader never has it
    # Its second consumer gives it back (or dies): it does not come back.
    q.release_many(list(c.got))
    assert c.bodies() == [b"m1", b"m2", b"m2"]  # only m2 came again
    assert q.unacked == 1 and q.message_count == 0
    assert store.deleted == [1]


@in_loop
def test_a_settlement_of_an_old_leader_goes_to_its_successor():
    old, _ = inherited(1)
    c = FakeConsumer("c")
    old.subscribe(c)
    new, store = inherited(1)
    old.successor = new
    assert old.detach_consumers() == [c]
    old.settle(c.got[0], Outcome.ACCEPTED)
    assert store.deleted == [1] and new.message_count == 0


@in_loop
def test_a_new_leader_holds_back_what_was_delivered_until_settlements_had_time_to_come():
    q, store = inherited(4)
    q.hold_back(2, 60.0)
    assert q.message_count == 4
    c = FakeConsumer("c")
    q.subscribe(c)
    assert c.bodies() == [b"m3", b"m4"]  # never delivered before: at once
    q.settle_earlier([1], Outcome.ACCEPTED)
    assert store.deleted == [1] and q.message_count == 1
    q._give_back()  # the timer
    assert c.bodies() == [b"m3", b"m4", b"m2"]
    assert c.got[2].redelivered


@in_loop
def test_deliveries_of_a_broken_stream_wait_for_the_acks_its_node_sends_again():
    q, store = inherited(3)
    q.release_delay = 60.0
    far = FakeConsumer("far")  # stands for a consumer on another node (its Consume stream)
    q.subscribe(far)
    assert far.bodies() == [b"m1", b"m2", b"m3"]
    q.unsubscribe(far)
    q.release_later(list(far.got))  # the stream broke: its node may have acked m1 already
    near = FakeConsumer("near")
    q.subscribe(near)
    assert near.bodies() == [] and q.message_count == 3 and q.unacked == 0
    q.settle_earlier([1], Outcome.ACCEPTED)  # the node reached the leader again
    assert store.deleted == [1] and q.message_count == 2
    q._give_back()  # the timer
    assert near.bodies() == [b"m2", b"m3"] and all(m.redelivered for m in near.got)
