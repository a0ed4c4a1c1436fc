"""Durability with a real node process: crashes (SIGKILL), restarts, store faults, paging."""

from __future__ import annotations

import random
import signal
import sqlite3
import threading
import time

import pika
import pika.exceptions
import pytest

from tests.support.clients import connect
from tests.support.node import NodeProcess

PERSISTENT = pika.BasicProperties(delivery_mode=2)


def _restart(n: NodeProcess, sig: int = signal.SIGKILL) -> None:
    n.stop(sig)
    n.start()


def _drain(ch, queue: str, ack: bool = True, idle: float = 1.0) -> list[tuple[bytes, bool]]:
    """Everything in `queue` as (body, redelivered), via basic.get until empty."""
    out = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        method, _props, body = ch.basic_get(queue, auto_ack=False)
        if method is None:
            break
        out.append((body, method.redelivered))
        if ack:
            ch.basic_ack(method.delivery_tag)
    return out


@pytest.fixture
def node_proc():
    n = NodeProcess().start()
    yield n
    n.stop(signal.SIGKILL)


def test_confirmed_persistent_messages_survive_sigkill(node_proc):
    conn = connect(node_proc)
    ch = conn.channel()
    ch.queue_declare("dur-q", durable=True)
    ch.confirm_delivery()
    for i in range(500):
        ch.basic_publish("", "dur-q", b"m%d" % i, PERSISTENT)
    # A transient message in the durable queue does not survive, as in RabbitMQ.
    ch.basic_publish("", "dur-q", b"transient", pika.BasicProperties(delivery_mode=1))
    _restart(node_proc)
    conn = connect(node_proc)
    ch = conn.channel()
    got = _drain(ch, "dur-q")
    assert [b for b, _ in got] == [b"m%d" % i for i in range(500)]
    assert not any(r for _, r in got), "never delivered, so not redelivered"
    conn.close()


def test_unacked_come_back_redelivered_in_order_and_acked_never(node_proc):
    conn = connect(node_proc)
    ch = conn.channel()
    ch.queue_declare("dur-ack", durable=True)
    ch.confirm_delivery()
    for i in range(20):
        ch.basic_publish("", "dur-ack", b"%d" % i, PERSISTENT)
    acked = []
    for _ in range(10):
        method, _p, body = ch.basic_get("dur-ack")
        if int(body) % 2 == 0:
            ch.basic_ack(method.delivery_tag)
            acked.append(body)
        # odd ones stay delivered and unacked
    # An ack has no reply in 0-9-1, so a crash right after one may bring the message back; but
    # the channel handles methods in order, so a later publish's confirm means the ack before it
    # is committed too.
    ch.queue_declare("dur-ack-sync", durable=True)
    ch.basic_publish("", "dur-ack-sync", b"sync", PERSISTENT)
    _restart(node_proc)
    conn = connect(node_proc)
    ch = conn.channel()
    got = _drain(ch, "dur-ack")
    bodies = [b for b, _ in got]
    assert bodies == [b"%d" % i for i in range(20) if not (i < 10 and i % 2 == 0)]
    redelivered = {b for b, r in got if r}
    assert redelivered == {b"1", b"3", b"5", b"7", b"9"}
    assert not set(acked) & set(bodies)


def test_restart_keeps_durable_topology_and_drops_transient(node_proc):
    conn = connect(node_proc)
    ch = conn.channel()
    ch.exchange_declare("dur-x", "topic", durable=True)
    ch.exchange_declare("tmp-x", "fanout", durable=False)
    ch.queue_declare("dur-topo", durable=True)
    ch.queue_declare("tmp-topo", durable=False)
    excl = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind("dur-topo", "dur-x", "a.#")
    ch.queue_bind("tmp-topo", "dur-x", "b.#")
    _restart(node_proc, signal.SIGTERM)
    conn = connect(node_proc)
    ch = conn.channel()
    ch.exchange_declare("dur-x", passive=True)
    ch.queue_declare("dur-topo", passive=True)
    ch.confirm_delivery()
    ch.basic_publish("dur-x", "a.1", b"routed")
    assert _drain(ch, "dur-topo") == [(b"routed", False)]
    for kind, name in (("exchange", "tmp-x"), ("queue", "tmp-topo"), ("queue", excl)):
        c = conn.channel()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
            if kind == "exchange":
                c.exchange_declare(name, passive=True)
            else:
                c.queue_declare(name, passive=True)
        assert info.value.reply_code == 404
    conn.close()


def test_users_and_vhosts_from_first_boot_persist(make_node):
    n = make_node()
    conn = connect(n)
    conn.channel().queue_declare("dur-vh", durable=True)
    conn.close()
    _restart(n)
    conn = connect(n)
    assert conn.channel().queue_declare("dur-vh", passive=True).method.queue == "dur-vh"
    conn.close()


def test_crash_ledger_random_kill_points(node_proc):
    """Publish with confirms and consume with acks while the node is SIGKILLed at random moments.

    Ledger: every confirmed message that was not acked must be delivered again after the restart;
    no message that was never published appears; an acked message is not delivered after the
    restart that follows the commit of its ack (checked at the end with a quiet period).
    """
    rng = random.Random(7)
    confirmed: set[bytes] = set()
    acked: set[bytes] = set()  # acks followed by a confirmed publish: committed for sure
    acked_unsure: set[bytes] = set()
    published = 0
    queue = "ledger"
    for round_no in range(6):
        conn = connect(node_proc)
        ch = conn.channel()
        ch.queue_declare(queue, durable=True)
        ch.confirm_delivery()
        stop = threading.Event()
        kill_after = rng.uniform(0.2, 1.2)
        killer = threading.Timer(kill_after, lambda: node_proc.proc.send_signal(signal.SIGKILL))
        killer.start()
        try:
            while True:
                body = b"r%d-%d" % (round_no, published)
                published += 1
                ch.basic_publish("", queue, body, PERSISTENT)
                confirmed.add(body)  # basic_publish returned: the broker confirmed it
                acked |= acked_unsure  # ...and so every ack sent before it is committed
                acked_unsure.clear()
                if published % 7 == 0:
                    method, _p, got = ch.basic_get(queue)
                    if method is not None and rng.random() < 0.6:
                        ch.basic_ack(method.delivery_tag)
                        acked_unsure.add(got)
        except (pika.exceptions.AMQPError, OSError):
            pass
        finally:
            stop.set()
            killer.cancel()
        node_proc.proc.wait(10)
        node_proc.stop()
        node_proc.start()
    conn = connect(node_proc)
    ch = conn.channel()
    remaining = [b for b, _ in _drain(ch, queue)]
    assert len(remaining) == len(set(remaining)), "a message was duplicated within the queue"
    invented = (
        set(remaining)
        - confirmed
        - {b"r%d-%d" % (r, i) for r in range(6) for i in range(published)}
    )
    assert not invented
    lost = confirmed - acked - acked_unsure - set(remaining)
    assert not lost, f"{len(lost)} confirmed, unacked messages lost, e.g. {sorted(lost)[:5]}"
    resurrected = acked & set(remaining)
    assert not resurrected, f"acked messages came back: {sorted(resurrected)[:5]}"
    assert len(confirmed) > 100


def test_store_full_nacks_publishers_and_recovers(make_node):
    n = make_node("--store-max-bytes", str(256 * 1024))
    conn = connect(n)
    ch = conn.channel()
    ch.queue_declare("full-q", durable=True)
    ch.confirm_delivery()
    body = b"x" * 4000
    nacked = 0
    for _ in range(200):
        try:
            ch.basic_publish("", "full-q", body, PERSISTENT)
        except pika.exceptions.NackError:
            nacked += 1
    assert nacked > 0, "the store limit never refused a publish"
    assert "commit failed" in n.log()
    # Consumers keep being served, and freeing space lets publishing resume.
    ch.queue_purge("full-q")
    time.sleep(1.0)
    ch.basic_publish("", "full-q", b"after", PERSISTENT)
    assert n.alive()
    conn.close()


def test_corrupt_store_refuses_to_start(tmp_path):
    n = NodeProcess()
    data = n.dir / "data"
    data.mkdir(parents=True)
    (data / "messages.db").write_bytes(b"this is not a database" * 100)
    with pytest.raises(RuntimeError) as info:
        n.start(timeout=15)
    assert "messages.db" in str(info.value)
    assert n.proc.returncode == 1


def test_foreign_sqlite_file_refuses_to_start(tmp_path):
    n = NodeProcess()
    data = n.dir / "data"
    data.mkdir(parents=True)
    db = sqlite3.connect(data / "messages.db")
    db.execute(
        "CREATE TABLE queues (qid INTEGER PRIMARY KEY, vhost TEXT, name TEXT, durable INT, delivered INT)"
    )
    db.execute("INSERT INTO queues VALUES (1, '/', 'q', 1, 0)")
    db.commit()
    db.close()
    with pytest.raises(RuntimeError) as info:
        n.start(timeout=15)
    assert "messages.db" in str(info.value) and "not a Merpati message store" in str(info.value)


def test_paging_keeps_order_beyond_the_memory_budget(make_node):
    n = make_node("--message-memory-budget", str(2 * 1024 * 1024))
    conn = connect(n)
    ch = conn.channel()
    ch.queue_declare("paged", durable=False)
    ch.confirm_delivery()
    count = 12000
    for i in range(count):
        ch.basic_publish("", "paged", b"%06d" % i + b"." * 1000)
    assert ch.queue_declare("paged", passive=True).method.message_count == count
    got = []
    ch.basic_qos(prefetch_count=500)
    for method, _props, body in ch.consume("paged", inactivity_timeout=5):
        if method is None:
            break
        got.append(int(body[:6]))
        ch.basic_ack(method.delivery_tag)
        if len(got) == count:
            break
    assert got == list(range(count))
    conn.close()


def test_confirm_when_an_autoack_consumer_takes_a_persistent_message_at_once(node_proc):
    """Insert and delete cancel out in one store batch; the confirm must not wait for a later write."""
    pub = connect(node_proc)
    ch = pub.channel()
    ch.queue_declare("dur-autoack", durable=True)
    sub = connect(node_proc)
    sub_ch = sub.channel()
    got = []
    sub_ch.basic_consume("dur-autoack", lambda c, m, p, b: got.append(b), auto_ack=True)
    sub.process_data_events(time_limit=0.2)
    ch.confirm_delivery()

    def timeout(*_):
        raise AssertionError("a publisher confirm never came")

    old = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(10)  # basic_publish waits for its confirm without a timeout of its own
    try:
        for i in range(20):
            ch.basic_publish("", "dur-autoack", b"%d" % i, PERSISTENT)  # returns once confirmed
            sub.process_data_events(time_limit=0)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    deadline = time.monotonic() + 5
    while len(got) < 20 and time.monotonic() < deadline:
        sub.process_data_events(time_limit=0.05)
    assert got == [b"%d" % i for i in range(20)]
