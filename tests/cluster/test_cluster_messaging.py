"""Messages across a three-node cluster: publish on one node, queue on another, consume on a third."""

from __future__ import annotations

import json
import signal
import time

import pika
import pika.exceptions as pex
import pytest

from tests.cluster.conftest import wait_all_running
from tests.support.clients import connect
from tests.support.ctl import ctl_out
from tests.support.names import uid


def leader_of(cluster, queue: str) -> str:
    out = ctl_out(cluster["n1"], "--formatter", "json", "list_queues", "name", "node")
    for row in json.loads(out):
        if row["name"] == queue:
            return row["node"]
    raise AssertionError(f"queue {queue} not listed")


def consume_n(conn, ch, queue: str, n: int, timeout: float = 10.0, ack: bool = True) -> list[bytes]:
    got: list[bytes] = []

    def on_message(c, method, props, body):
        got.append(body)
        if ack:
            c.basic_ack(method.delivery_tag)

    tag = ch.basic_consume(queue, on_message)
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.05)
    ch.basic_cancel(tag)
    return got


@pytest.mark.parametrize("kind", ["direct", "fanout", "topic", "headers"])
def test_declare_on_n1_publish_on_n2_consume_on_n3(cluster, kind):
    ex, queues = uid(kind), [uid("q") for _ in range(3)]
    c1 = connect(cluster["n1"])
    ch1 = c1.channel()
    ch1.exchange_declare(ex, kind)
    for q in queues:
        ch1.queue_declare(q)
        if kind == "headers":
            ch1.queue_bind(q, ex, arguments={"x-match": "all", "k": "v"})
        else:
            ch1.queue_bind(q, ex, "a.b" if kind != "topic" else "a.*")
    # Placement balances leaders over the nodes, so three queues do not all land on one.
    assert len({leader_of(cluster, q) for q in queues}) >= 2
    c2 = connect(cluster["n2"])
    ch2 = c2.channel()
    ch2.confirm_delivery()
    props = pika.BasicProperties(headers={"k": "v"}, delivery_mode=2)
    for i in range(20):
        ch2.basic_publish(ex, "a.b", b"%d" % i, props)  # confirmed, across nodes
    c3 = connect(cluster["n3"])
    ch3 = c3.channel()
    ch3.basic_qos(prefetch_count=10)
    for q in queues:
        assert consume_n(c3, ch3, q, 20) == [b"%d" % i for i in range(20)]
    for c in (c1, c2, c3):
        c.close()


def test_remote_consumer_nack_requeue_and_redelivery(cluster):
    q = uid("remote-ack")
    c1 = connect(cluster["n1"])
    c1.channel().queue_declare(q)
    leader = leader_of(cluster, q)
    other = next(n for n in ("n1", "n2", "n3") if n != leader)
    conn = connect(cluster[other])
    ch = conn.channel()
    ch.basic_publish("", q, b"one")
    ch.basic_publish("", q, b"two")
    seen = []

    def on_message(c, method, props, body):
        seen.append((body, method.redelivered))
        if body == b"one" and not method.redelivered:
            c.basic_nack(method.delivery_tag, requeue=True)
        else:
            c.basic_ack(method.delivery_tag)

    ch.basic_qos(prefetch_count=1)
    ch.basic_consume(q, on_message)
    deadline = time.monotonic() + 10
    while len(seen) < 3 and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.05)
    assert seen == [(b"one", False), (b"one", True), (b"two", False)]
    assert ch.queue_declare(q, passive=True).method.message_count == 0
    conn.close()
    c1.close()


def test_unconfirmed_and_transactional_publishes_to_a_queue_on_another_node(cluster):
    # Publishes without confirms travel without confirm bookkeeping; a transaction's commit
    # still waits for the queue's node to take them.
    q = uid("remote-tx")
    c1 = connect(cluster["n1"])
    c1.channel().queue_declare(q, durable=True)
    leader = leader_of(cluster, q)
    publisher, consumer = (n for n in ("n1", "n2", "n3") if n != leader)
    conn = connect(cluster[publisher])
    plain = conn.channel()
    for i in range(300):
        plain.basic_publish("", q, b"p%d" % i)
    tx = conn.channel()
    tx.tx_select()
    for i in range(50):
        tx.basic_publish("", q, b"t%d" % i, pika.BasicProperties(delivery_mode=2))
    tx.tx_commit()
    # Both channels of one connection: the plain ones went first, and the commit-ok came back
    # only once the transaction's messages were on the queue's node.
    assert tx.queue_declare(q, passive=True).method.message_count == 350
    c3 = connect(cluster[consumer])
    ch3 = c3.channel()
    ch3.basic_qos(prefetch_count=100)
    got = consume_n(c3, ch3, q, 350)
    assert got == [b"p%d" % i for i in range(300)] + [b"t%d" % i for i in range(50)]
    for c in (conn, c1, c3):
        c.close()


def test_remote_basic_get_and_purge(cluster):
    q = uid("remote-get")
    c1 = connect(cluster["n1"])
    ch1 = c1.channel()
    ch1.queue_declare(q)
    leader = leader_of(cluster, q)
    other = next(n for n in ("n1", "n2", "n3") if n != leader)
    conn = connect(cluster[other])
    ch = conn.channel()
    ch.confirm_delivery()
    for i in range(3):
        ch.basic_publish("", q, b"%d" % i)
    method, _, body = ch.basic_get(q, auto_ack=False)
    assert body == b"0" and method.message_count == 2
    ch.basic_ack(method.delivery_tag)
    assert ch.queue_purge(q).method.message_count == 2
    assert ch.basic_get(q)[0] is None
    conn.close()
    c1.close()


def test_node_down_makes_its_queues_unavailable_then_they_return(cluster):
    q = uid("on-n3")
    # Declare from n3 until a queue lands on n3 (placement balances; try a few names).
    c3 = connect(cluster["n3"])
    ch3 = c3.channel()
    for _ in range(6):
        ch3.queue_declare(q, durable=True)
        if leader_of(cluster, q) == "n3":
            break
        ch3.queue_delete(q)
        q = uid("on-n3")
    assert leader_of(cluster, q) == "n3"
    ch3.confirm_delivery()
    for i in range(5):
        ch3.basic_publish("", q, b"%d" % i, pika.BasicProperties(delivery_mode=2))
    c3.close()
    cluster["n3"].stop(signal.SIGKILL)
    conn = connect(cluster["n1"])
    ch = conn.channel()
    ch.confirm_delivery()
    deadline = time.monotonic() + 15
    while True:
        try:
            ch.basic_publish("", q, b"while-down", pika.BasicProperties(delivery_mode=2))
        except pex.NackError:
            break  # the queue's node is down: the publisher is told
        assert time.monotonic() < deadline, "publishes to a down node's queue were confirmed"
        time.sleep(0.2)
    with pytest.raises(pex.ChannelClosedByBroker) as info:
        conn.channel().queue_declare(q, passive=True)
    assert info.value.reply_code == 404 and "down" in info.value.reply_text
    # The rest of the cluster keeps working.
    other = uid("still-fine")
    ch.queue_declare(other)
    cluster["n3"].start(timeout=60)
    deadline = time.monotonic() + 20
    while True:
        try:
            chx = conn.channel()
            if chx.queue_declare(q, passive=True).method.message_count == 5:
                break
        except pex.ChannelClosedByBroker:
            pass
        assert time.monotonic() < deadline, "the queue did not come back with its messages"
        time.sleep(0.3)
    conn.close()
    # Each node learns that n3 is back from its own Ping (a second apart): wait until all do,
    # or the next test may place a queue on n3 through a node that sees it while another
    # still reports it down.
    wait_all_running(cluster)


def test_forwarding_metrics_count_messages_between_nodes(cluster):
    import urllib.request

    q = uid("metered")
    c1 = connect(cluster["n1"])
    c1.channel().queue_declare(q)
    leader = leader_of(cluster, q)
    other = next(n for n in ("n1", "n2", "n3") if n != leader)
    conn = connect(cluster[other])
    ch = conn.channel()
    ch.confirm_delivery()
    for _ in range(25):
        ch.basic_publish("", q, b"x" * 10)
    conn.close()
    c1.close()

    def scrape(node) -> dict[str, float]:
        text = (
            urllib.request.urlopen(cluster[node].metrics_url + "/metrics", timeout=10)
            .read()
            .decode()
        )
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("merpati_forwarding_"):
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out

    sent = scrape(other)
    assert sent[f'merpati_forwarding_sent_messages_total{{peer="{leader}"}}'] >= 25
    assert sent[f'merpati_forwarding_peer_up{{peer="{leader}"}}'] == 1
    assert scrape(leader)["merpati_forwarding_received_messages_total"] >= 25


def _rpc_round_trip(client_node, server_node, requests: int) -> list[bytes]:
    """pika's direct reply-to RPC: the client on one node, the server on another."""
    q = uid("rpc")
    server = connect(server_node)
    sch = server.channel()
    sch.queue_declare(q)

    def serve(ch, method, props, body):
        ch.basic_publish(
            "",
            props.reply_to,
            b"re:" + body,
            pika.BasicProperties(correlation_id=props.correlation_id),
        )

    sch.basic_consume(q, serve, auto_ack=True)
    client = connect(client_node)
    cch = client.channel()
    replies: list[bytes] = []
    cch.basic_consume("amq.rabbitmq.reply-to", lambda c, m, p, b: replies.append(b), auto_ack=True)
    for i in range(requests):
        cch.basic_publish(
            "",
            q,
            b"%d" % i,
            pika.BasicProperties(reply_to="amq.rabbitmq.reply-to", correlation_id=str(i)),
        )
    deadline = time.monotonic() + 10
    while len(replies) < requests and time.monotonic() < deadline:
        server.process_data_events(time_limit=0.02)
        client.process_data_events(time_limit=0.02)
    server.close()
    client.close()
    return replies


def test_direct_reply_to_with_the_server_on_another_node(cluster):
    """The replier publishes to the client's reply-to name on its own node: the reply travels
    to the node holding the reply consumer."""
    assert _rpc_round_trip(cluster["n1"], cluster["n2"], 20) == [b"re:%d" % i for i in range(20)]


@pytest.mark.parametrize("arguments", [{}, {"x-queue-type": "quorum"}], ids=["classic", "quorum"])
def test_an_unacked_delivery_from_a_queue_on_another_node_times_out(cluster, arguments):
    """The acknowledgement timeout is the consumer's channel's, wherever the queue lives: the
    channel on a node that does not lead the queue closes with 406 (the queue's x-consumer-timeout,
    read from the replicated metadata), and the message goes back to the leader, redelivered."""
    q = uid("ack-timeout")
    c1 = connect(cluster["n1"])
    c1.channel().queue_declare(q, durable=True, arguments={**arguments, "x-consumer-timeout": 500})
    leader = leader_of(cluster, q)
    other = next(n for n in ("n1", "n2", "n3") if n != leader)
    conn = connect(cluster[other])
    ch = conn.channel()
    ch.basic_publish("", q, b"m")
    got: list[bytes] = []
    ch.basic_consume(q, lambda _c, _m, _p, body: got.append(body), auto_ack=False)
    conn.call_later(10, ch.stop_consuming)  # a safety net, should the channel never close
    with pytest.raises(pex.ChannelClosedByBroker) as info:
        ch.start_consuming()
    assert got == [b"m"]
    assert info.value.reply_code == 406
    assert "timed out. Timeout value used: 500 ms" in info.value.reply_text
    conn.close()
    c2 = connect(cluster[leader])
    ch2 = c2.channel()
    deadline = time.monotonic() + 10
    method = None
    while method is None and time.monotonic() < deadline:
        method, _props, body = ch2.basic_get(q, auto_ack=True)
        if method is None:
            c2.sleep(0.05)
    assert method is not None and method.redelivered and body == b"m"
    c2.close()
    c1.close()
