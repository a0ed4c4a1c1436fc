"""cluster.handover in one process: two brokers wired over gRPC (tests/cluster/test_forwarding.py's
harness). Queue "q" is led by b, then moved to a; b hands over everything it held: ready messages,
paged-out ones, deliveries still unsettled (local consumers and consumers on a), and what a crash
left in its store.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from merpati.node.core.outcome import Outcome
from merpati.node.core.queue import LocalQueue, MemoryBudget
from merpati.node.metadata import commands as cmds
from merpati.node.metadata.log import LocalLog
from merpati.node.store import SQLiteStore

from .test_forwarding import TRANSIENT, Cluster, FakeConsumer, msg, run, start_member, until

MOVE = cmds.MoveQueue("/", "q", "b", "a")


async def fill(c: Cluster, n: int, props: bytes | None = None) -> list[bytes]:
    """n messages straight into b's queue, committed."""
    lq = c.b.broker.queue("/", "q")
    bodies = [b"m%05d" % i for i in range(n)]
    token = 0
    for body in bodies:
        token = max(token, lq.enqueue(msg(body) if props is None else msg(body, props)))
    await asyncio.wait_for(c.b.store.ledger.wait(token), 10)
    return bodies


async def drain_a(c: Cluster, expect: int) -> list[bytes]:
    """Every message now in a's queue (the new leader), in delivery order."""
    lq = c.a.broker.queue("/", "q")
    assert isinstance(lq, LocalQueue)
    consumer = FakeConsumer("check", prefetch=10**9)
    lq.subscribe(consumer)
    await until(lambda: len(consumer.got) >= expect, 15)
    await asyncio.sleep(0.1)
    return consumer.bodies()


def stored_rows(store: SQLiteStore) -> int:
    return store._reader.execute("SELECT count(*) FROM messages").fetchone()[0]


def test_ready_and_paged_messages_move_in_order_and_leave_the_old_store(tmp_path: Path) -> None:
    async def body(c: Cluster) -> None:
        c.b.broker.budget = MemoryBudget(20_000)  # a few hundred messages in memory, then paging
        c.b.cluster.moves.window = 50
        await c.queue("q")
        bodies = await fill(c, 3000)
        lq = c.b.broker.queue("/", "q")
        assert lq._paged > 1000, "the test needs paged-out messages"
        await c.everywhere(MOVE)
        await until(lambda: not c.b.broker.cluster.moves.handovers, 20)
        assert await drain_a(c, 3000) == bodies  # all of them, once, in order
        await until(lambda: c.b.broker.state.queue("/", "q").handing_over == (), 5)
        await until(lambda: stored_rows(c.b.store) == 0, 5)

    run(body, tmp_path)


def test_local_consumer_is_cancelled_and_its_deliveries_follow_the_queue(tmp_path: Path) -> None:
    async def body(c: Cluster) -> None:
        await c.queue("q")
        bodies = await fill(c, 20)
        lq = c.b.broker.queue("/", "q")
        consumer = FakeConsumer("local", prefetch=6)
        lq.subscribe(consumer)
        assert len(consumer.got) == 6
        await c.everywhere(MOVE)
        assert consumer.cancelled_with and "moved to node 'a'" in consumer.cancelled_with[0]
        held = consumer.got
        # The 14 ready ones go at once; the 6 delivered wait for their settlement.
        await until(lambda: c.a.broker.queue("/", "q").stats_now()[0] == 14, 10)
        assert c.b.broker.cluster.moves.handovers, "done before the deliveries were settled"
        consumer.settle(lq, held[0], Outcome.ACCEPTED)  # an ack after the move still counts
        consumer.settle(lq, held[1], Outcome.ACCEPTED)
        consumer.settle(lq, held[2], Outcome.RELEASED)  # a requeue goes to the new leader
        consumer.settle(lq, held[3], Outcome.REJECTED)  # dropped (no dead-letter exchange)
        lq.release_many([held[4], held[5]])  # the channel closes
        await until(lambda: not c.b.broker.cluster.moves.handovers, 10)
        got = await drain_a(c, 17)
        expected = set(bodies) - {held[i].body for i in (0, 1, 3)}
        assert sorted(got) == sorted(expected)
        await until(lambda: stored_rows(c.b.store) == 0, 5)

    run(body, tmp_path)


def test_deliveries_of_a_consumer_on_another_node_are_released_to_the_new_leader(
    tmp_path: Path,
) -> None:
    for order in ("ab", "ba"):  # whichever node applies the move first

        async def body(c: Cluster, order: str = order) -> None:
            await c.queue("q")
            bodies = await fill(c, 30)
            rq = c.a.broker.queue("/", "q")
            consumer = FakeConsumer("on-a", prefetch=8)
            rq.subscribe(consumer)
            await until(lambda: len(consumer.got) == 8)
            await until(lambda: c.b.broker.queue("/", "q").unacked == 8)
            for name in order:
                await getattr(c, name).apply(MOVE)
            await until(lambda: not c.b.broker.cluster.moves.handovers, 10)
            await until(lambda: bool(consumer.cancelled_with), 5)
            assert sorted(await drain_a(c, 30)) == bodies  # the 8 held ones once, not lost

        run(body, tmp_path / order)


def test_a_crash_mid_handover_loses_nothing(tmp_path: Path) -> None:
    async def body(c: Cluster) -> None:
        await c.queue("q")
        bodies = await fill(c, 500)
        await fill_transient(c)
        # a cannot take messages yet: b's forwards fail and the rows stay.
        port_b = int(c.a.fw.peers["b"].address.rpartition(":")[2])
        await c.a.fw.server.stop()
        await c.everywhere(MOVE)
        await asyncio.sleep(0.5)
        assert c.b.broker.cluster.moves.handovers and stored_rows(c.b.store) >= 500
        # b "crashes": its forwarding and store go away with the handover unfinished.
        await c.b.fw.stop()
        await asyncio.get_running_loop().run_in_executor(None, c.b.store.close)
        for h in c.b.broker.cluster.moves.handovers:  # the crashed process does nothing more
            h.done = True
        # a comes back; b restarts from its store and its (replayed) metadata.
        await c.a.fw.server.start("127.0.0.1", int(c.a.fw.port))
        store = SQLiteStore(tmp_path / "b.db")
        stored = store.open()
        assert any("\0handover\0" in name for _vh, name in stored), stored
        store.start(asyncio.get_running_loop())
        log = LocalLog()
        for cmd in (
            cmds.AddVhost("/"),
            cmds.DeclareQueue("/", "q", True, leader="b"),
            MOVE,
        ):
            log.apply(cmd)
        broker, fw = await start_member(
            "b", log, store, {"a": int(c.a.fw.port), "b": port_b}, c.secret
        )
        try:
            assert broker.recover(stored) == 500  # the persistent ones (transient do not survive)
            await until(lambda: not broker.cluster.moves.handovers, 20)
            got = await drain_a(c, 500)
            assert set(got) >= set(bodies)  # at least once
            assert broker.state.queue("/", "q").handing_over == ()
            await until(lambda: stored_rows(store) == 0, 5)
        finally:
            await fw.detach()
            await asyncio.get_running_loop().run_in_executor(None, store.close)

    async def fill_transient(c: Cluster) -> None:
        lq = c.b.broker.queue("/", "q")
        for i in range(10):
            lq.enqueue(msg(b"t%d" % i, TRANSIENT))

    run(body, tmp_path)


def test_a_queue_deleted_during_its_handover_takes_its_messages_along(tmp_path: Path) -> None:
    async def body(c: Cluster) -> None:
        await c.queue("q")
        await fill(c, 100)
        await c.a.fw.server.stop()  # nothing can be handed over
        await c.everywhere(MOVE)
        await asyncio.sleep(0.2)
        assert c.b.broker.cluster.moves.handovers
        await c.everywhere(cmds.DeleteQueue("/", "q"))
        assert not c.b.broker.cluster.moves.handovers
        await until(lambda: stored_rows(c.b.store) == 0, 5)
        await c.a.fw.server.start("127.0.0.1", int(c.a.fw.port))

    run(body, tmp_path)


def test_moved_back_while_handing_over_gets_its_old_messages_locally(tmp_path: Path) -> None:
    async def body(c: Cluster) -> None:
        await c.queue("q")
        bodies = await fill(c, 50)
        await c.a.fw.server.stop()
        await c.everywhere(MOVE)
        await asyncio.sleep(0.2)
        await c.everywhere(cmds.MoveQueue("/", "q", "a", "b"))  # back before a got anything
        await c.a.fw.server.start("127.0.0.1", int(c.a.fw.port))
        await until(lambda: not c.b.broker.cluster.moves.handovers, 10)
        lq = c.b.broker.queue("/", "q")
        assert isinstance(lq, LocalQueue) and lq.handover is None
        consumer = FakeConsumer("check", prefetch=1000)
        lq.subscribe(consumer)
        await until(lambda: len(consumer.got) >= 50)
        assert sorted(consumer.bodies()) == sorted(bodies)

    run(body, tmp_path)


def test_rows_the_counts_missed_are_found_before_the_queue_row_goes(tmp_path: Path) -> None:
    async def body(c: Cluster) -> None:
        await c.queue("q")
        bodies = await fill(c, 10)  # all in memory: nothing counted as paged
        lq = c.b.broker.queue("/", "q")
        await c.a.fw.server.stop()
        await c.everywhere(MOVE)
        # A row the queue never counted (as after a failed write it did not know succeeded).
        token = c.b.store.append(
            lq.qid, 10_000, False, msg(b"stray").route_raw, msg(b"").props_raw, b"stray"
        )
        await asyncio.wait_for(c.b.store.ledger.wait(token), 5)
        await c.a.fw.server.start("127.0.0.1", int(c.a.fw.port))
        await until(lambda: not c.b.broker.cluster.moves.handovers, 15)
        assert sorted(await drain_a(c, 11)) == sorted([*bodies, b"stray"])
        await until(lambda: stored_rows(c.b.store) == 0, 5)

    run(body, tmp_path)


def test_nothing_is_forwarded_before_the_new_leader_serves_the_queue(tmp_path: Path) -> None:
    """Forwarded to a before a applied the move, a message would come back to b (a's handle is
    still b's queue), and the two confirms would wait for each other in b's ledger for ever."""

    async def body(c: Cluster) -> None:
        await c.queue("q")
        bodies = await fill(c, 20)
        await c.b.apply(MOVE)  # the old leader applies the move first
        await asyncio.sleep(0.5)
        assert c.b.broker.cluster.moves.handovers
        assert c.a.fw.server.counters.publish_messages == 0
        await c.a.apply(MOVE)
        await until(lambda: not c.b.broker.cluster.moves.handovers, 10)
        assert sorted(await drain_a(c, 20)) == bodies
        # b's confirms still flow.
        await c.queue("other")
        token = c.b.broker.queue("/", "other").enqueue(msg(b"x", rk="other"))
        await asyncio.wait_for(c.b.store.ledger.wait(token), 5)

    run(body, tmp_path)


def test_a_basic_get_held_on_another_node_still_settles_after_the_move(tmp_path: Path) -> None:
    async def body(c: Cluster) -> None:
        await c.queue("q")
        bodies = await fill(c, 4)
        rq = c.a.broker.queue("/", "q")
        got = [(await rq.get(True))[0] for _ in range(2)]
        assert [m.body for m in got] == bodies[:2]
        await c.everywhere(
            MOVE
        )  # a leads q now; the handle a's channel got the messages from is gone
        rq.settle(got[0], Outcome.ACCEPTED)  # the ack still reaches b, which holds the delivery
        rq.settle(got[1], Outcome.RELEASED)  # a requeue follows the queue to a
        await until(lambda: not c.b.broker.cluster.moves.handovers, 10)
        assert sorted(await drain_a(c, 3)) == sorted(bodies[1:])
        await until(lambda: stored_rows(c.b.store) == 0, 5)
        # The requeued one kept its delivery state across the move (the forwarding record
        # carries it); the two never delivered did not get one.
        (consumer,) = c.a.broker.queue("/", "q").consumers
        assert {m.body: m.redelivered for m in consumer.got} == {
            bodies[1]: True,
            bodies[2]: False,
            bodies[3]: False,
        }

    run(body, tmp_path)


async def crash_b_mid_handover(c: Cluster) -> None:
    """The move is applied, a cannot take anything yet, and b 'crashes' with every row left."""
    await c.a.fw.server.stop()
    await c.everywhere(MOVE)
    await asyncio.sleep(0.3)
    assert c.b.broker.cluster.moves.handovers
    await c.b.fw.stop()
    await asyncio.get_running_loop().run_in_executor(None, c.b.store.close)
    for h in c.b.broker.cluster.moves.handovers:  # the crashed process does nothing more
        h.done = True


async def restart_b(c: Cluster, tmp_path: Path, history: list[cmds.Command]) -> tuple:
    """b starts again from its store and `history` (its replayed metadata)."""
    port_b = int(c.a.fw.peers["b"].address.rpartition(":")[2])
    store = SQLiteStore(tmp_path / "b.db")
    stored = store.open()
    store.start(asyncio.get_running_loop())
    log = LocalLog()
    for cmd in history:
        log.apply(cmd)
    broker, fw = await start_member("b", log, store, {"a": int(c.a.fw.port), "b": port_b}, c.secret)
    return broker, store, stored, fw


def test_rows_of_a_queue_deleted_while_the_old_leader_was_down_do_not_reach_its_successor(
    tmp_path: Path,
) -> None:
    """b crashed mid-handover; meanwhile the queue was deleted and a new queue of the same name
    declared (on a). The old queue's messages must not turn up in the new one when b starts."""

    async def body(c: Cluster) -> None:
        await c.queue("q")
        await fill(c, 50)
        await crash_b_mid_handover(c)
        for cmd in (cmds.DeleteQueue("/", "q"), cmds.DeclareQueue("/", "q", True, leader="a")):
            await c.a.apply(cmd)
        await c.a.fw.server.start("127.0.0.1", int(c.a.fw.port))
        history = [
            cmds.AddVhost("/"),
            cmds.DeclareQueue("/", "q", True, leader="b"),
            MOVE,
            cmds.DeleteQueue("/", "q"),
            cmds.DeclareQueue("/", "q", True, leader="a"),
        ]
        broker, store, stored, fw = await restart_b(c, tmp_path, history)
        try:
            broker.recover(stored)
            await until(lambda: not broker.cluster.moves.handovers, 10)
            await asyncio.sleep(0.3)
            assert c.a.broker.queue("/", "q").stats_now() == (0, 0)
            await until(lambda: stored_rows(store) == 0, 5)
        finally:
            await fw.detach()
            await asyncio.get_running_loop().run_in_executor(None, store.close)

    run(body, tmp_path)


def test_rows_of_a_queue_deleted_while_its_leader_was_down_do_not_reach_its_successor(
    tmp_path: Path,
) -> None:
    """No move at all: b, the leader, was down when the queue was deleted and declared again
    (placed on a). b's old rows are not a handover; they go with the deleted queue."""

    async def body(c: Cluster) -> None:
        await c.queue("q")
        await fill(c, 20)
        await c.b.fw.stop()
        await asyncio.get_running_loop().run_in_executor(None, c.b.store.close)
        for cmd in (cmds.DeleteQueue("/", "q"), cmds.DeclareQueue("/", "q", True, leader="a")):
            await c.a.apply(cmd)
        history = [
            cmds.AddVhost("/"),
            cmds.DeclareQueue("/", "q", True, leader="b"),
            cmds.DeleteQueue("/", "q"),
            cmds.DeclareQueue("/", "q", True, leader="a"),
        ]
        broker, store, stored, fw = await restart_b(c, tmp_path, history)
        try:
            broker.recover(stored)
            await until(lambda: not broker.cluster.moves.handovers, 10)
            await asyncio.sleep(0.3)
            assert c.a.broker.queue("/", "q").stats_now() == (0, 0)
            await until(lambda: stored_rows(store) == 0, 5)
        finally:
            await fw.detach()
            await asyncio.get_running_loop().run_in_executor(None, store.close)

    run(body, tmp_path)


def test_messages_that_expire_during_the_handover_are_dead_lettered_not_moved(
    tmp_path: Path,
) -> None:
    """x-message-ttl 300 ms, the new leader unreachable for longer: the messages expire on b
    (in memory and paged out) and go to the dead-letter exchange as they would have without
    the move; none reaches a (where the TTL would start again)."""

    async def body(c: Cluster) -> None:
        c.b.broker.budget = MemoryBudget(2_000)  # some in memory, the rest paged out
        await c.everywhere(cmds.DeclareExchange("/", "dlx", "fanout"))
        await c.queue("dead")
        await c.everywhere(cmds.Bind("/", "dlx", "q", "dead", ""))
        args = {"x-message-ttl": 300, "x-dead-letter-exchange": "dlx"}
        await c.queue("q", arguments=args)
        await fill(c, 40)
        assert c.b.broker.queue("/", "q")._paged, "the test needs paged-out messages"
        await c.a.fw.server.stop()
        await c.everywhere(MOVE)
        await asyncio.sleep(0.7)
        await c.a.fw.server.start("127.0.0.1", int(c.a.fw.port))
        await until(lambda: not c.b.broker.cluster.moves.handovers, 10)
        lq = c.a.broker.queue("/", "q")
        consumer = FakeConsumer("check", prefetch=1000)
        lq.subscribe(consumer)
        await asyncio.sleep(0.1)
        assert consumer.got == []
        assert c.b.broker.queue("/", "dead").stats_now()[0] == 40
        await until(lambda: stored_rows(c.b.store) == 40, 5)  # only those in "dead"

    run(body, tmp_path)


def test_rows_left_by_a_crash_that_expired_meanwhile_are_dead_lettered(tmp_path: Path) -> None:
    async def body(c: Cluster) -> None:
        setup = [
            cmds.DeclareExchange("/", "dlx", "fanout"),
            cmds.DeclareQueue("/", "dead", True, leader="b"),
            cmds.Bind("/", "dlx", "q", "dead", ""),
            cmds.DeclareQueue(
                "/",
                "q",
                True,
                arguments={"x-message-ttl": 300, "x-dead-letter-exchange": "dlx"},
                leader="b",
            ),
        ]
        for cmd in setup:
            await c.everywhere(cmd)
        await fill(c, 30)
        await crash_b_mid_handover(c)
        await c.a.fw.server.start("127.0.0.1", int(c.a.fw.port))
        await asyncio.sleep(0.4)  # their TTL runs out while b is down
        broker, store, stored, fw = await restart_b(c, tmp_path, [cmds.AddVhost("/"), *setup, MOVE])
        try:
            broker.recover(stored)
            await until(lambda: not broker.cluster.moves.handovers, 10)
            await asyncio.sleep(0.2)
            assert c.a.broker.queue("/", "q").stats_now() == (0, 0)
            assert broker.queue("/", "dead").stats_now()[0] == 30
        finally:
            await fw.detach()
            await asyncio.get_running_loop().run_in_executor(None, store.close)

    run(body, tmp_path)


def test_a_failed_delivery_after_the_move_counts_against_the_delivery_limit(tmp_path: Path) -> None:
    """x-delivery-limit 1: a message modified with delivery-failed twice is dead-lettered,
    whether the second failure comes before the move or after it."""

    async def body(c: Cluster) -> None:
        from merpati.node.core.outcome import Modified

        await c.everywhere(cmds.DeclareExchange("/", "dlx", "fanout"))
        await c.queue("dead")
        await c.everywhere(cmds.Bind("/", "dlx", "q", "dead", ""))
        args = {"x-delivery-limit": 1, "x-dead-letter-exchange": "dlx"}
        await c.queue("q", arguments=args)
        await fill(c, 1)
        lq = c.b.broker.queue("/", "q")
        consumer = FakeConsumer("local", prefetch=1)
        lq.subscribe(consumer)
        failed = Modified(delivery_failed=True)
        consumer.unacked -= 1
        lq.settle(consumer.got[0], Outcome.MODIFIED, failed)  # count 1: back in the queue
        lq.kick()
        assert len(consumer.got) == 2 and consumer.got[1].delivery_count == 1
        await c.everywhere(MOVE)
        lq.settle(consumer.got[1], Outcome.MODIFIED, failed)  # count 2 > 1: dead-lettered
        await until(lambda: not c.b.broker.cluster.moves.handovers, 10)
        await asyncio.sleep(0.2)
        assert c.a.broker.queue("/", "q").stats_now()[0] == 0
        assert c.b.broker.queue("/", "dead").stats_now()[0] == 1

    run(body, tmp_path)


def test_a_purge_during_the_handover_purges_what_is_still_on_its_way(tmp_path: Path) -> None:
    async def body(c: Cluster) -> None:
        await c.queue("q")
        await fill(c, 20)
        await c.a.fw.server.stop()
        await c.everywhere(MOVE)
        await asyncio.sleep(0.2)
        c.a.broker.queue("/", "q").purge()  # queue.purge on the new leader, mid-handover
        await c.a.fw.server.start("127.0.0.1", int(c.a.fw.port))
        await until(lambda: not c.b.broker.cluster.moves.handovers, 10)
        assert c.a.broker.queue("/", "q").stats_now()[0] == 0

    run(body, tmp_path)


def test_a_purge_during_the_handover_drops_paged_rows_not_read_yet(tmp_path: Path) -> None:
    async def body(c: Cluster) -> None:
        c.b.broker.budget = MemoryBudget(20_000)
        await c.queue("q")
        await fill(c, 3000)
        assert c.b.broker.queue("/", "q")._paged > 1000
        await c.a.fw.server.stop()  # the new leader cannot take anything yet
        await c.everywhere(MOVE)
        await asyncio.sleep(0.2)
        c.a.broker.queue("/", "q").purge()
        await until(lambda: all(h.remaining == 0 for h in c.b.broker.cluster.moves.handovers), 5)
        await c.a.fw.server.start("127.0.0.1", int(c.a.fw.port))
        await until(lambda: not c.b.broker.cluster.moves.handovers, 10)
        await asyncio.sleep(0.2)
        assert c.a.broker.queue("/", "q").stats_now()[0] == 0
        await until(lambda: stored_rows(c.b.store) == 0, 5)

    run(body, tmp_path)
