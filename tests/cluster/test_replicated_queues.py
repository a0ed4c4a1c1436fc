"""Replicated (quorum) queues on a real three-node cluster: replicas, failover under SIGKILL,
consumers that outlive their queue's leader, a replica that comes back and catches up.

Each test starts its own cluster: they kill nodes."""

from __future__ import annotations

import json
import signal
import sqlite3
import time

import pika
import pika.exceptions as pex
import pytest

from merpati.cluster.replication.queues import HOLD_BACK
from tests.cluster.conftest import start_cluster
from tests.support.clients import connect
from tests.support.ctl import ctl, ctl_out
from tests.support.http import call, q, samples, scrape
from tests.support.names import uid

QUORUM = {"x-queue-type": "quorum"}


@pytest.fixture
def three(request):
    c = start_cluster()
    yield c
    c.stop()
    c.discard(keep=request.session.testsfailed > 0)


def queue_info(node, name: str) -> dict:
    status, body = call(node.management_url, "GET", f"/api/queues/%2F/{q(name)}")
    assert status == 200, body
    return body


def wait_for(what, timeout: float = 30.0, every: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = what()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(every)


def publish_confirmed(ch, queue: str, bodies: list[bytes], timeout: float = 30.0) -> int:
    """Publish each body until the broker confirms it (a nack means: publish again, as a
    publisher does); returns how many nacks there were."""
    nacks = 0
    deadline = time.monotonic() + timeout
    for body in bodies:
        while True:
            try:
                ch.basic_publish("", queue, body, pika.BasicProperties(delivery_mode=2))
                break
            except pex.NackError:
                nacks += 1
                assert time.monotonic() < deadline, f"{body!r} never confirmed"
                time.sleep(0.05)
    return nacks


def drain(ch, queue: str) -> list[tuple[bytes, bool]]:
    """Everything the queue holds, by basic.get. A new leader holds back what its predecessor
    had delivered for a moment (HOLD_BACK): an empty answer is asked again once after that."""
    out = []
    empty = 0
    while empty < 2:
        method, _props, body = ch.basic_get(queue, auto_ack=True)
        if method is None:
            empty += 1
            time.sleep(HOLD_BACK + 0.5 if empty == 1 else 0)
            continue
        empty = 0
        out.append((body, method.redelivered))
    return out


def others(cluster, name: str) -> list[str]:
    return [n for n in ("n1", "n2", "n3") if n != name]


def test_quorum_queue_gets_three_replicas_and_shows_them(three):
    name = uid("qq")
    conn = connect(three["n1"])
    conn.channel().queue_declare(name, durable=True, arguments=QUORUM)
    info = queue_info(three["n2"], name)
    assert info["type"] == "quorum"
    assert sorted(info["members"]) == ["n1", "n2", "n3"]
    assert sorted(info["online"]) == ["n1", "n2", "n3"]
    assert info["epoch"] == 1
    leader = info["leader"]
    led = queue_info(three[leader], name)["replica"]
    assert led["role"] == "leader" and set(led["followers"]) == set(others(three, leader))

    # The leader's node exports the queue's replication figures.
    def metric(family: str) -> float | None:
        found = samples(scrape(three[leader].metrics_url))
        return found.get(f'{family}{{queue="{name}",vhost="/"}}')

    assert metric("merpati_quorum_queue_replicas") == 3
    assert wait_for(lambda: metric("merpati_quorum_queue_replicas_in_sync") == 3)

    # merpati ctl quorum_status, asked of any node, shows every replica as it reports itself
    # (a follower's own report of its lag can trail the leader's figure by a fetch).
    def status_rows() -> list:
        return json.loads(ctl_out(three["n3"], "--formatter", "json", "quorum_status", name))

    def all_in_sync() -> list | None:
        rows = status_rows()
        return rows if all(r["online"] and r["lag"] == 0 for r in rows) else None

    rows = wait_for(all_in_sync, timeout=10)
    assert {r["node"]: r["role"] for r in rows} == {
        n: ("leader" if n == leader else "follower") for n in ("n1", "n2", "n3")
    }
    assert all(r["epoch"] == 1 for r in rows), rows
    out = ctl_out(three["n3"], "quorum_status", name)
    assert f"leader {leader}, epoch 1" in out
    # A classic queue stays a single copy.
    classic = uid("cq")
    conn.channel().queue_declare(classic, durable=True)
    assert queue_info(three["n1"], classic)["members"] == [
        queue_info(three["n1"], classic)["leader"]
    ]
    # x-quorum-initial-group-size picks fewer replicas.
    small = uid("q2")
    conn.channel().queue_declare(
        small, durable=True, arguments={**QUORUM, "x-quorum-initial-group-size": 2}
    )
    assert len(queue_info(three["n1"], small)["members"]) == 2
    conn.close()


def test_kill_the_leader_nothing_confirmed_is_lost_and_publishers_carry_on(three):
    name = uid("qq")
    c = connect(three["n1"])
    c.channel().queue_declare(name, durable=True, arguments=QUORUM)
    c.close()
    leader = queue_info(three["n1"], name)["leader"]
    survivor = others(three, leader)[0]
    pub = connect(three[survivor])
    ch = pub.channel()
    ch.confirm_delivery()
    before = [b"m%d" % i for i in range(300)]
    publish_confirmed(ch, name, before)
    # Three deliveries unsettled when the leader dies.
    getter = pub.channel()
    held = [getter.basic_get(name, auto_ack=False) for _ in range(3)]
    assert [h[2] for h in held] == before[:3]

    killed_at = time.monotonic()
    three[leader].stop(sig=signal.SIGKILL)
    after = [b"a%d" % i for i in range(100)]
    nacks = publish_confirmed(ch, name, after)
    took = time.monotonic() - killed_at
    assert ch.is_open  # the publisher's channel was never closed
    # Publishes wait for the new leader instead of being nacked; only one in flight to the
    # dead leader at the kill could be.
    assert nacks <= 1

    info = queue_info(three[survivor], name)
    assert info["leader"] != leader and info["epoch"] == 2
    got = drain(ch, name)
    bodies = [b for b, _ in got]
    assert set(bodies) == set(before) | set(after), "a confirmed message was lost"
    # Nothing published before the failover comes twice; what was held comes again, flagged.
    assert sorted(b for b in bodies if b.startswith(b"m")) == sorted(before)
    redelivered = {b for b, r in got if r}
    assert set(before[:3]) <= redelivered
    print(f"first publish confirmed {took:.2f} s after SIGKILL of the leader")


def test_the_delivery_count_survives_a_failover(three):
    """x-delivery-limit 3: two failed deliveries through the leader, its SIGKILL, then two more
    through the new leader dead-letter the message. The count went through the replicated log
    (not the leader's memory): the first delivery after the failover says x-delivery-count 2."""
    name, dlq = uid("qq"), uid("dlq")
    c = connect(three["n1"])
    ch = c.channel()
    ch.queue_declare(dlq, durable=True, arguments=QUORUM)  # a target that survives the kill
    args = {
        **QUORUM,
        "x-delivery-limit": 3,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": dlq,
    }
    ch.queue_declare(name, durable=True, arguments=args)
    c.close()
    leader = queue_info(three["n1"], name)["leader"]
    conn = connect(three[leader])
    ch = conn.channel()
    ch.confirm_delivery()
    publish_confirmed(ch, name, [b"poison"])
    for expected in (None, 1):
        method, props, body = ch.basic_get(name, auto_ack=False)
        assert body == b"poison" and (props.headers or {}).get("x-delivery-count") == expected
        ch.basic_reject(method.delivery_tag, requeue=True)
    ch.queue_declare(name, passive=True)  # a round trip: the rejects are handled
    # Nothing confirms a failed delivery's record: wait until every follower holds it.
    wait_for(
        lambda: all(
            f["lag"] == 0 for f in queue_info(three[leader], name)["replica"]["followers"].values()
        )
    )

    three[leader].stop(sig=signal.SIGKILL)
    survivor = others(three, leader)[0]
    wait_for(lambda: queue_info(three[survivor], name)["epoch"] == 2, timeout=20)
    wait_for(lambda: queue_info(three[survivor], dlq)["leader"] != leader, timeout=20)
    conn = connect(three[survivor])
    ch = conn.channel()

    def get(queue: str, ack: bool = False):
        method, props, body = ch.basic_get(queue, auto_ack=ack)
        return (method, props, body) if method is not None else None

    for expected in (2, 3):
        method, props, body = wait_for(lambda: get(name), timeout=20)
        assert body == b"poison" and method.redelivered
        assert props.headers["x-delivery-count"] == expected
        ch.basic_reject(method.delivery_tag, requeue=True)  # the 4th failure passes the limit
    _m, props, body = wait_for(lambda: get(dlq, ack=True), timeout=20)
    assert body == b"poison" and props.headers["x-death"][0]["reason"] == "delivery_limit"
    assert get(name) is None
    conn.close()


def test_a_consumer_on_a_surviving_node_keeps_consuming_across_the_failover(three):
    name = uid("qq")
    c = connect(three["n1"])
    c.channel().queue_declare(name, durable=True, arguments=QUORUM)
    c.close()
    leader = queue_info(three["n1"], name)["leader"]
    survivor = others(three, leader)[0]
    conn = connect(three[survivor])
    ch = conn.channel()
    ch.basic_qos(prefetch_count=10)
    got: list[bytes] = []
    cancelled = []

    def on_message(c, method, props, body):
        got.append(body)
        c.basic_ack(method.delivery_tag)

    ch.add_on_cancel_callback(lambda frame: cancelled.append(frame))
    ch.basic_consume(name, on_message)
    pub = connect(three[survivor])
    pch = pub.channel()
    pch.confirm_delivery()
    publish_confirmed(pch, name, [b"x%d" % i for i in range(20)])
    deadline = time.monotonic() + 10
    while len(got) < 20 and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.05)
    assert len(got) == 20

    three[leader].stop(sig=signal.SIGKILL)
    publish_confirmed(pch, name, [b"y%d" % i for i in range(20)])
    deadline = time.monotonic() + 20
    while len({b for b in got if b.startswith(b"y")}) < 20 and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.05)
    assert {b for b in got if b.startswith(b"y")} == {b"y%d" % i for i in range(20)}
    assert not cancelled, "the consumer was cancelled by the failover"
    assert ch.is_open


def test_acks_of_deliveries_made_before_the_failover_still_settle(three):
    name = uid("qq")
    c = connect(three["n1"])
    c.channel().queue_declare(name, durable=True, arguments=QUORUM)
    leader = queue_info(three["n1"], name)["leader"]
    pch = c.channel()
    pch.confirm_delivery()
    publish_confirmed(pch, name, [b"m%d" % i for i in range(100)])
    c.close()
    # A consumer on each survivor: one of them is on the new leader's node (its acks settle
    # there directly), the other's go to the new leader over forwarding.
    consumers = []
    for node in others(three, leader):
        conn = connect(three[node])
        ch = conn.channel()
        ch.basic_qos(prefetch_count=10)
        got: list[tuple[int, bytes, bool]] = []
        ch.basic_consume(
            name, lambda _c, m, _p, body, got=got: got.append((m.delivery_tag, body, m.redelivered))
        )
        consumers.append((conn, ch, got))

    def pump(until, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not until() and time.monotonic() < deadline:
            for conn, _ch, _got in consumers:
                conn.process_data_events(time_limit=0.02)

    pump(lambda: all(len(got) == 10 for _c, _ch, got in consumers))
    held = [(ch, list(got)) for _c, ch, got in consumers]
    assert sorted(len(h) for _ch, h in held) == [10, 10]
    for _c, _ch, got in consumers:
        got.clear()

    three[leader].stop(sig=signal.SIGKILL)
    # Half acknowledged while no leader answers (within the first second), half after.
    for ch, h in held:
        for tag, _body, _r in h[:5]:
            ch.basic_ack(tag)
    survivor = others(three, leader)[0]
    wait_for(lambda: queue_info(three[survivor], name)["epoch"] == 2, timeout=20)
    for ch, h in held:
        for tag, _body, _r in h[5:]:
            ch.basic_ack(tag)
    acked = {body for _ch, h in held for _t, body, _r in h}

    def settle_all() -> int:
        n = 0
        for _conn, ch, got in consumers:
            for tag, _body, _r in got[n_acked[id(ch)] :]:
                ch.basic_ack(tag)
                n += 1
            n_acked[id(ch)] = len(got)
        return n

    n_acked = {id(ch): 0 for _c, ch, _g in consumers}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        pump(lambda: False, timeout=1.0)
        if not settle_all() and queue_info(three[survivor], name)["messages"] == 0:
            break
    again = [body for _c, _ch, got in consumers for _t, body, _r in got]
    # Everything arrives; an acknowledged message comes at most once more (delivered again
    # before its ack reached the new leader), and after both were acknowledged, never again.
    assert set(again) | acked == {b"m%d" % i for i in range(100)}, "a message was lost"
    assert len(again) == len(set(again)), "a message came twice after the failover"
    twice = acked & set(again)
    assert all(ch.is_open for _c, ch, _g in consumers)
    assert queue_info(three[survivor], name)["messages"] == 0
    for conn, _ch, _g in consumers:
        conn.close()
    print(f"{len(twice)} of 20 acknowledged deliveries came once more")


def test_a_replica_that_was_down_catches_up_and_can_lead(three):
    name = uid("qq")
    c = connect(three["n1"])
    c.channel().queue_declare(name, durable=True, arguments=QUORUM)
    c.close()
    leader = queue_info(three["n1"], name)["leader"]
    down, third = others(three, leader)
    three[down].stop()
    pub = connect(three[leader])
    ch = pub.channel()
    ch.confirm_delivery()
    # Confirmed by the leader and the third replica alone: two of three.
    publish_confirmed(ch, name, [b"m%d" % i for i in range(200)])
    for _ in range(50):
        ch.basic_get(name, auto_ack=True)
    pub.close()
    three[down].start()

    def caught_up():
        led = queue_info(three[leader], name)["replica"]
        f = led["followers"][down]
        return f["lag"] == 0 and queue_info(three[down], name)["replica"]["applied"] > 0

    wait_for(caught_up)
    # Now the replica that was down and the leader hold it: kill the third, then the leader.
    three[third].stop(sig=signal.SIGKILL)
    conn = connect(three[down])
    got = drain(conn.channel(), name)
    assert sorted(b for b, _ in got) == sorted(b"m%d" % i for i in range(50, 200))


def test_a_replica_with_an_empty_store_reads_a_snapshot(three):
    name = uid("qq")
    c = connect(three["n1"])
    c.channel().queue_declare(name, durable=True, arguments=QUORUM)
    c.close()
    leader = queue_info(three["n1"], name)["leader"]
    lost = others(three, leader)[0]
    pub = connect(three[leader])
    ch = pub.channel()
    ch.confirm_delivery()
    publish_confirmed(ch, name, [b"m%d" % i for i in range(100)])
    # Acks commit and the leader compacts its log: what came before is only in its rows now.
    for _ in range(20):
        ch.basic_get(name, auto_ack=True)
    # Two failed deliveries of m20: its count travels in the snapshot too.
    for _ in range(2):
        method, _props, body = ch.basic_get(name, auto_ack=False)
        assert body == b"m20"
        ch.basic_reject(method.delivery_tag, requeue=True)
    publish_confirmed(ch, name, [b"n%d" % i for i in range(10)])
    wait_for(lambda: queue_info(three[leader], name)["replica"]["followers"][lost]["lag"] == 0)
    three[lost].stop()
    store = (three[lost].dir / "data") / "messages.db"
    assert store.exists()
    for p in (three[lost].dir / "data").glob("messages.db*"):
        p.unlink()
    three[lost].start()
    wait_for(lambda: queue_info(three[lost], name)["replica"]["applied"] > 0)
    three[lost].stop()
    db = sqlite3.connect(store)
    (qid,) = db.execute("SELECT qid FROM queues WHERE name = ?", (name,)).fetchone()
    rows = db.execute(
        "SELECT body, delivery_count FROM messages WHERE id >= ? AND id < ?",
        (qid << 40, (qid + 1) << 40),
    ).fetchall()
    db.close()
    assert sorted(r[0] for r in rows) == sorted(
        [b"m%d" % i for i in range(20, 100)] + [b"n%d" % i for i in range(10)]
    )
    assert {r[0]: r[1] for r in rows if r[1]} == {b"m20": 2}


def test_sigterm_of_the_leader_hands_the_leadership_over_before_it_stops(three):
    name = uid("qq")
    c = connect(three["n1"])
    c.channel().queue_declare(name, durable=True, arguments=QUORUM)
    c.close()
    leader = queue_info(three["n1"], name)["leader"]
    survivor = others(three, leader)[0]
    pub = connect(three[survivor])
    ch = pub.channel()
    ch.confirm_delivery()
    publish_confirmed(ch, name, [b"m%d" % i for i in range(100)])
    three[leader].stop()  # SIGTERM
    # The stopping node handed over while it ran: a new leader is named already, no failover
    # detection needed.
    info = queue_info(three[survivor], name)
    assert info["leader"] != leader and info["epoch"] == 2
    assert "stopping while still leading" not in three[leader].log()
    publish_confirmed(ch, name, [b"a%d" % i for i in range(10)])
    got = [b for b, _ in drain(ch, name)]
    assert sorted(got) == sorted([b"m%d" % i for i in range(100)] + [b"a%d" % i for i in range(10)])


def test_drain_node_moves_quorum_leadership_without_copying_messages(three):
    import json

    from tests.support.ctl import ctl

    name = uid("qq")
    c = connect(three["n1"])
    ch = c.channel()
    ch.queue_declare(name, durable=True, arguments=QUORUM)
    leader = queue_info(three["n1"], name)["leader"]
    ch.confirm_delivery()
    publish_confirmed(ch, name, [b"m%d" % i for i in range(50)])
    report = json.loads(
        ctl(three[leader], "--formatter", "json", "drain-node", "--wait", "30").stdout
    )
    moved = {r["queue"]: r["to"] for r in report["moved"]}
    assert moved[name] not in ("", leader), report
    assert report["complete"], report
    info = queue_info(three["n1"], name)
    assert info["leader"] == moved[name] and info["epoch"] == 2
    assert info["handing_over"] == []  # the replicas had the messages: nothing was copied
    got = [b for b, _ in drain(ch, name)]
    assert sorted(got) == sorted(b"m%d" % i for i in range(50))


def test_a_paused_leader_that_wakes_up_cannot_confirm_and_nothing_is_lost(three):
    name = uid("qq")
    c = connect(three["n1"])
    c.channel().queue_declare(name, durable=True, arguments=QUORUM)
    c.close()
    leader = queue_info(three["n1"], name)["leader"]
    survivor = others(three, leader)[0]
    # A publisher on the leader's own node, and one on a survivor.
    stale = connect(three[leader])
    sch = stale.channel()
    sch.confirm_delivery()
    publish_confirmed(sch, name, [b"s%d" % i for i in range(20)])
    pub = connect(three[survivor])
    ch = pub.channel()
    ch.confirm_delivery()

    t0 = time.monotonic()
    three[leader].proc.send_signal(signal.SIGSTOP)
    try:
        publish_confirmed(ch, name, [b"a%d" % i for i in range(50)])
        info = queue_info(three[survivor], name)
        assert info["leader"] != leader and info["epoch"] == 2
    finally:
        three[leader].proc.send_signal(signal.SIGCONT)
    # The old leader wakes up believing it leads: what it is sent now is never confirmed by
    # it alone; a nack makes the publisher send again, and the message then reaches the new
    # leader through this node.
    t1 = time.monotonic()
    publish_confirmed(sch, name, [b"t%d" % i for i in range(20)], timeout=60)
    print(f"failover {t1 - t0:.1f} s, stale publisher done {time.monotonic() - t1:.1f} s later")
    wait_for(lambda: queue_info(three[leader], name)["replica"]["role"] == "follower")
    got = [b for b, _ in drain(ch, name)]
    expected = (
        [b"s%d" % i for i in range(20)]
        + [b"a%d" % i for i in range(50)]
        + [b"t%d" % i for i in range(20)]
    )
    assert set(got) == set(expected), "a confirmed message was lost"
    assert sorted(b for b in got if not b.startswith(b"t")) == sorted(
        b for b in expected if not b.startswith(b"t")
    )


def test_a_paused_leader_that_wakes_delivers_nothing_the_new_leader_had_acked(three):
    # While the leader is stopped another replica takes over and every message is consumed and
    # acked there. A consumer whose basic.consume reached the old leader's socket meanwhile must
    # not get those messages from the old leader's memory when it wakes, before it hears of the
    # new epoch (cluster/replication/queues.py: STALL, HOLD_AFTER_STALL).
    import threading

    name = uid("qq")
    conn = connect(three["n1"])
    conn.channel().queue_declare(name, durable=True, arguments=QUORUM)
    conn.close()
    leader = queue_info(three["n1"], name)["leader"]
    survivor = others(three, leader)[0]
    pub = connect(three[survivor])
    ch = pub.channel()
    ch.confirm_delivery()
    bodies = [b"m%d" % i for i in range(20)]
    publish_confirmed(ch, name, bodies)
    late = connect(three[leader])  # opened before the pause
    lch = late.channel()
    got_late: list[bytes] = []
    three[leader].proc.send_signal(signal.SIGSTOP)
    try:

        def moved() -> bool:
            try:  # the API may wait for the stopped leader's answer until the failover
                return queue_info(three[survivor], name)["leader"] != leader
            except OSError:
                return False

        wait_for(moved)
        acked = [b for b, _ in drain(ch, name)]
        assert sorted(acked) == sorted(bodies)

        def consume_late() -> None:
            lch.basic_consume(name, lambda c, m, p, b: got_late.append(b), auto_ack=False)
            late.process_data_events(time_limit=4)

        t = threading.Thread(target=consume_late)
        t.start()
        time.sleep(0.5)  # the consume waits in the stopped node's socket
    finally:
        three[leader].proc.send_signal(signal.SIGCONT)
    t.join(20)
    assert got_late == [], "the woken old leader delivered messages already acked"
    late.close()
    pub.close()


def test_grow_and_shrink_change_replicas_and_a_new_replica_catches_up(three):
    name = uid("qq")
    conn = connect(three["n1"])
    ch = conn.channel()
    ch.queue_declare(name, durable=True, arguments={**QUORUM, "x-quorum-initial-group-size": 2})
    info = queue_info(three["n1"], name)
    (outside,) = [n for n in ("n1", "n2", "n3") if n not in info["members"]]
    ch.confirm_delivery()
    publish_confirmed(ch, name, [b"m%d" % i for i in range(100)])
    for _ in range(10):
        ch.basic_get(name, auto_ack=True)

    rows = json.loads(ctl_out(three["n1"], "--formatter", "json", "grow", outside))
    assert {"vhost": "/", "name": name, "result": "grown"} in rows
    assert sorted(queue_info(three["n1"], name)["members"]) == ["n1", "n2", "n3"]

    def caught_up():
        st = json.loads(ctl_out(three["n1"], "--formatter", "json", "quorum_status", name))
        row = next(r for r in st if r["node"] == outside)
        print(st)
        return row["online"] and row.get("lag") == 0 and row["applied"] > 0

    wait_for(caught_up)
    # The new replica holds the queue: with the other one dead and removed, the leader hands
    # the queue to it.
    leader = info["leader"]
    other = next(n for n in info["members"] if n != leader)
    three[other].stop(sig=signal.SIGKILL)
    rows = json.loads(ctl_out(three[outside], "--formatter", "json", "shrink", other))
    assert rows and rows[0]["result"].startswith("removed"), rows
    assert sorted(queue_info(three[outside], name)["members"]) == sorted([leader, outside])
    ctl(three[leader], "drain-node", "--wait", "30")
    assert queue_info(three[outside], name)["leader"] == outside
    survivor = connect(three[outside])
    got = [b for b, _ in drain(survivor.channel(), name)]
    assert sorted(got) == sorted(b"m%d" % i for i in range(10, 100))


def test_removing_a_node_recreates_its_replicas_on_another(three):
    name = uid("qq")
    conn = connect(three["n1"])
    ch = conn.channel()
    ch.queue_declare(name, durable=True, arguments={**QUORUM, "x-quorum-initial-group-size": 2})
    info = queue_info(three["n1"], name)
    leader = info["leader"]
    leaving = next(n for n in info["members"] if n != leader)
    spare = next(n for n in ("n1", "n2", "n3") if n not in info["members"])
    ch.confirm_delivery()
    publish_confirmed(ch, name, [b"m%d" % i for i in range(30)])
    conn.close()
    asked = next(n for n in ("n1", "n2", "n3") if n != leaving)
    ctl_out(three[asked], "remove_node", leaving)
    after = queue_info(three[asked], name)
    assert sorted(after["members"]) == sorted([leader, spare])
    three[leaving].stop()

    seen: list = []

    def in_sync():
        st = json.loads(ctl_out(three[asked], "--formatter", "json", "quorum_status", name))
        seen[:] = st
        return len(st) == 2 and all(r["online"] and r.get("lag") == 0 for r in st)

    try:
        wait_for(in_sync)
    except AssertionError:
        # Once in CI the new replica never caught up within 30 s: say where it stood.
        raise AssertionError(f"replicas not in sync after 30 s: {seen}") from None
    got = [b for b, _ in drain(connect(three[spare]).channel(), name)]
    assert sorted(got) == sorted(b"m%d" % i for i in range(30))


def test_an_amqp10_receiver_and_sender_carry_on_across_the_failover(three):
    from proton import Message

    from tests.amqp10._support import blocking

    name = uid("qq")
    c = connect(three["n1"])
    c.channel().queue_declare(name, durable=True, arguments=QUORUM)
    c.close()
    leader = queue_info(three["n1"], name)["leader"]
    node = three[others(three, leader)[0]]
    conn = blocking(node)
    sender = conn.create_sender(f"/queues/{name}")
    for i in range(30):
        sender.send(Message(body=f"m{i}"))  # returns once accepted: replicated to a majority
    receiver = conn.create_receiver(f"/queues/{name}", credit=10)
    held = [receiver.receive(timeout=10).body for _ in range(10)]
    assert held == [f"m{i}" for i in range(10)]

    three[leader].stop(sig=signal.SIGKILL)
    for _ in range(5):
        receiver.accept()  # settled while no leader answers
    # A transfer while there is no leader is held, and accepted once the new leader has it;
    # one sent before this node saw the leader go is rejected (sent to the dead leader): the
    # sender sends it again, as with a 0-9-1 nack.
    from proton.utils import SendException

    for attempt in range(20):
        try:
            sender.send(Message(body="after"))
            break
        except SendException:
            assert attempt < 19, "never accepted"
            time.sleep(0.2)
    for _ in range(5):
        receiver.accept()
    got = []
    while True:
        try:
            m = receiver.receive(timeout=3)
        except Exception:  # noqa: BLE001 - proton's Timeout: nothing more
            break
        got.append(m.body)
        receiver.accept()
    conn.close()
    # The link was never detached and nothing is lost. What was accepted while there was no
    # leader does not come back; what was accepted after the new leader took over may have been
    # delivered again before the accept reached it (once, and settled by either).
    assert not set(held[:5]) & set(got), f"accepted deliveries came back: {set(held) & set(got)}"
    assert len([b for b in got if b != "after"]) == len({b for b in got if b != "after"})
    # ("after" may come twice: a rejected send can have reached the dead leader's replicas.)
    assert {b for b in got if b != "after"} - set(held[5:]) == {f"m{i}" for i in range(10, 30)}
    assert "after" in got
