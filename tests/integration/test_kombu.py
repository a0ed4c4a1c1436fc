"""kombu over the py-amqp transport against a real node: what Celery and many apps actually use."""

from __future__ import annotations

import uuid

import pytest
from kombu import Connection, Consumer, Exchange, Producer, Queue


def _url(node) -> str:
    return f"amqp://guest:guest@127.0.0.1:{node.port}//"


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def conn(node):
    c = Connection(_url(node), transport_options={"confirm_publish": True}, connect_timeout=5)
    c.connect()
    yield c
    c.release()
    assert node.alive()


def _drain(conn: Connection, received: list, n: int, timeout: float = 5.0) -> None:
    """drain_events until `n` messages arrived in `received` (or fail)."""
    import time

    deadline = time.monotonic() + timeout
    while len(received) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            pytest.fail(f"expected {n} messages, got {len(received)}")
        try:
            conn.drain_events(timeout=min(left, 1.0))
        except TimeoutError:
            pass


def _delete_queue(conn: Connection, name: str) -> None:
    ch = conn.channel()
    ch.queue_delete(name)
    ch.close()


def _assert_no_more(conn: Connection, received: list, timeout: float = 0.5) -> None:
    before = len(received)
    try:
        conn.drain_events(timeout=timeout)
    except TimeoutError:
        pass
    assert len(received) == before, received[before:]


def test_connection_reports_server_properties(conn):
    conn.ensure_connection(max_retries=1)
    client = conn.connection  # amqp.Connection
    assert client.server_properties["product"] == "Merpati"
    assert client.server_capabilities.get("publisher_confirms") is True
    assert conn.transport_options["confirm_publish"] is True


def test_direct_exchange_publish_confirm_consume_ack(conn):
    ex = Exchange(_name("kx-direct"), type="direct", durable=False, auto_delete=True)
    q = Queue(_name("kq-direct"), exchange=ex, routing_key="rk", durable=False, auto_delete=False)
    other = Queue(
        _name("kq-other"), exchange=ex, routing_key="other", durable=False, auto_delete=False
    )
    channel = conn.channel()
    q(channel).declare()
    other(channel).declare()

    producer = Producer(channel, exchange=ex)
    for i in range(5):
        # With confirm_publish the py-amqp channel waits for basic.ack from the broker.
        producer.publish({"n": i}, routing_key="rk", serializer="json", headers={"h": i})
    producer.publish({"n": "x"}, routing_key="nomatch", serializer="json")

    received = []

    def on_message(body, message):
        received.append(
            (
                body,
                message.headers,
                message.delivery_info["routing_key"],
                message.delivery_info["exchange"],
            )
        )
        message.ack()

    with Consumer(channel, queues=[q], callbacks=[on_message], accept=["json"]):
        _drain(conn, received, 5)
        _assert_no_more(conn, received)
    assert [r[0] for r in received] == [{"n": i} for i in range(5)]
    assert [r[1]["h"] for r in received] == list(range(5))
    assert {r[2] for r in received} == {"rk"}
    assert {r[3] for r in received} == {ex.name}

    # Everything was acked: nothing remains; the other queue got nothing.
    assert q(channel).queue_declare(passive=True).message_count == 0
    assert other(channel).queue_declare(passive=True).message_count == 0
    q(channel).delete()
    other(channel).delete()


def test_topic_exchange_routing(conn):
    ex = Exchange(_name("kx-topic"), type="topic", durable=False, auto_delete=True)
    q_star = Queue(_name("kq-star"), exchange=ex, routing_key="orders.*.created", auto_delete=True)
    q_hash = Queue(_name("kq-hash"), exchange=ex, routing_key="orders.#", auto_delete=True)
    channel = conn.channel()
    for q in (q_star, q_hash):
        q(channel).declare()
    producer = Producer(channel, exchange=ex, serializer="json")
    keys = [
        "orders.eu.created",
        "orders.eu.deleted",
        "orders",
        "orders.a.b.created",
        "billing.eu.created",
    ]
    for k in keys:
        producer.publish({"k": k}, routing_key=k)

    star, hashed, both = [], [], []

    def cb(bucket):
        def on_message(body, message):
            bucket.append(body["k"])
            both.append(body["k"])
            message.ack()

        return on_message

    with (
        Consumer(channel, queues=[q_star], callbacks=[cb(star)], accept=["json"]),
        Consumer(channel, queues=[q_hash], callbacks=[cb(hashed)], accept=["json"]),
    ):
        _drain(conn, both, 5)
        _assert_no_more(conn, both)
    assert star == ["orders.eu.created"]
    assert hashed == ["orders.eu.created", "orders.eu.deleted", "orders", "orders.a.b.created"]


def test_reject_and_requeue(conn):
    q = Queue(
        _name("kq-reject"), exchange=Exchange("", type="direct"), auto_delete=False, durable=False
    )
    channel = conn.channel()
    q(channel).declare()
    producer = Producer(channel, exchange=Exchange(""), routing_key=q.name, serializer="json")
    producer.publish({"m": "requeue-me"})
    producer.publish({"m": "reject-me"})

    seen = []

    def on_message(body, message):
        seen.append((body["m"], message.delivery_info["redelivered"]))
        if body["m"] == "requeue-me" and not message.delivery_info["redelivered"]:
            message.requeue()
        elif body["m"] == "reject-me":
            message.reject()  # requeue=False: dropped (no DLX)
        else:
            message.ack()

    with Consumer(channel, queues=[q], callbacks=[on_message], accept=["json"], prefetch_count=10):
        _drain(conn, seen, 3)
        _assert_no_more(conn, seen)
    assert ("requeue-me", False) in seen
    assert ("reject-me", False) in seen
    assert seen.count(("requeue-me", True)) == 1
    assert seen.index(("requeue-me", True)) > seen.index(("requeue-me", False))
    assert q(channel).queue_declare(passive=True).message_count == 0
    q(channel).delete()


def test_unacked_messages_return_when_channel_closes(node, conn):
    q = Queue(_name("kq-unacked"), durable=False, auto_delete=False)
    ch1 = conn.channel()
    q(ch1).declare()
    Producer(ch1, exchange=Exchange(""), routing_key=q.name).publish("payload")
    got = []
    with Consumer(
        ch1, queues=[q], callbacks=[lambda b, m: got.append(m)], accept=["json", "text/plain"]
    ):
        _drain(conn, got, 1)
    assert got[0].delivery_info["redelivered"] is False
    ch1.close()  # never acked → released back to the queue

    with Connection(_url(node)) as c2:
        sq = c2.SimpleQueue(q.name, queue_opts={"durable": False, "auto_delete": False})
        msg = sq.get(timeout=5)
        assert msg.payload == "payload"
        assert msg.delivery_info["redelivered"] is True
        msg.ack()
        sq.close()
        _delete_queue(c2, q.name)


def test_simple_queue_put_get(node):
    name = _name("ksimple")
    with Connection(_url(node), transport_options={"confirm_publish": True}) as c:
        sq = c.SimpleQueue(name, queue_opts={"durable": False, "auto_delete": False})
        for i in range(10):
            sq.put({"i": i}, serializer="json")
        assert sq.qsize() == 10
        out = []
        for _ in range(10):
            m = sq.get(block=True, timeout=5)
            out.append(m.payload["i"])
            m.ack()
        assert out == list(range(10))
        with pytest.raises(sq.Empty):
            sq.get(block=False)
        with pytest.raises(sq.Empty):
            sq.get(block=True, timeout=0.5)
        assert sq.qsize() == 0
        sq.close()
        _delete_queue(c, name)


def test_simple_queue_get_nowait_uses_basic_get(node):
    name = _name("ksimple-get")
    with Connection(_url(node), transport_options={"confirm_publish": True}) as c:
        sq = c.SimpleQueue(name, queue_opts={"durable": False, "auto_delete": False})
        sq.put("hello", serializer="raw", content_type="text/plain")
        sq.put(
            b"\x00\x01binary",
            serializer=None,
            content_type="application/data",
            content_encoding="binary",
        )
        m1 = sq.get_nowait()
        assert m1.payload == "hello"
        m1.ack()
        m2 = sq.get_nowait()
        assert m2.body == b"\x00\x01binary"
        assert m2.content_type == "application/data"
        m2.ack()
        with pytest.raises(sq.Empty):
            sq.get_nowait()
        sq.close()
        _delete_queue(c, name)


def test_publish_to_missing_exchange_is_channel_error_404(conn):
    from amqp.exceptions import NotFound

    channel = conn.channel()
    producer = Producer(
        channel, exchange=Exchange(_name("missing"), type="direct"), auto_declare=False
    )
    with pytest.raises(NotFound) as ei:
        producer.publish("x", routing_key="k")
    assert ei.value.code == 404
    # The connection survives a channel error.
    ch2 = conn.channel()
    q = Queue(_name("kq-after404"), auto_delete=True)
    q(ch2).declare()
