"""Quorum queues on one node, with pika: every message kept (persistent or not), RabbitMQ 4's
poison-message handling (a 0-9-1 requeue counts toward the delivery limit, 20 by default).

The cluster side (replicas, failover) is tests/cluster/test_replicated_queues.py."""

from __future__ import annotations

import pika

from tests.support.clients import connect
from tests.support.names import uid

QUORUM = {"x-queue-type": "quorum"}


def test_a_quorum_queue_keeps_transient_messages_across_a_restart(make_node):
    n = make_node()
    name = uid("qq")
    conn = connect(n)
    ch = conn.channel()
    ch.confirm_delivery()
    ch.queue_declare(name, durable=True, arguments=QUORUM)
    for i in range(50):
        ch.basic_publish("", name, b"t%d" % i, pika.BasicProperties(delivery_mode=1))
    method, _props, body = ch.basic_get(name, auto_ack=False)
    assert body == b"t0"
    conn.close()  # t0 back to the queue
    n.stop()
    n.start()
    ch = connect(n).channel()
    assert ch.queue_declare(name, passive=True).method.message_count == 50
    method, _props, body = ch.basic_get(name, auto_ack=True)
    assert body == b"t0" and method.redelivered


def test_a_requeue_counts_toward_the_delivery_limit_then_the_message_is_dead_lettered(node):
    conn = connect(node)
    ch = conn.channel()
    name, dlq = uid("qq"), uid("dlq")
    ch.queue_declare(dlq)
    ch.queue_declare(
        name,
        durable=True,
        arguments={
            **QUORUM,
            "x-delivery-limit": 2,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": dlq,
        },
    )
    ch.basic_publish("", name, b"poison")
    deliveries = 0
    while True:
        method, _props, _body = ch.basic_get(name, auto_ack=False)
        if method is None:
            break
        deliveries += 1
        ch.basic_nack(method.delivery_tag, requeue=True)
    assert deliveries == 3  # the first delivery and two more: the limit
    _m, props, body = ch.basic_get(dlq, auto_ack=True)
    assert body == b"poison"
    assert props.headers["x-death"][0]["reason"] == "delivery_limit"
    conn.close()


def test_a_quorum_queue_has_rabbitmq_4s_default_delivery_limit_and_classic_queues_none(node):
    conn = connect(node)
    ch = conn.channel()
    qq, classic = uid("qq"), uid("cq")
    ch.queue_declare(qq, durable=True, arguments=QUORUM)
    ch.queue_declare(classic)
    for name in (qq, classic):
        ch.basic_publish("", name, b"p")
    deliveries = 0
    while True:
        method, _props, _body = ch.basic_get(qq, auto_ack=False)
        if method is None:
            break
        deliveries += 1
        ch.basic_reject(method.delivery_tag, requeue=True)
    assert deliveries == 21  # dropped (no dead-letter exchange) after 20 redeliveries
    for _ in range(30):
        method, _props, _body = ch.basic_get(classic, auto_ack=False)
        ch.basic_reject(method.delivery_tag, requeue=True)
    assert ch.queue_declare(classic, passive=True).method.message_count == 1
    conn.close()


def test_default_queue_type_quorum_makes_durable_queues_quorum(make_node):
    from tests.support.http import call, q

    n = make_node("--default-queue-type", "quorum")
    conn = connect(n)
    ch = conn.channel()
    durable, transient = uid("d"), uid("t")
    ch.queue_declare(durable, durable=True)
    ch.queue_declare(transient, exclusive=True)
    ch.queue_declare(durable, durable=True)  # redeclared without the argument: equivalent
    types = {}
    for name in (durable, transient):
        status, body = call(n.management_url, "GET", f"/api/queues/%2F/{q(name)}")
        assert status == 200, body
        types[name] = body["type"]
    assert types == {durable: "quorum", transient: "classic"}
    conn.close()
