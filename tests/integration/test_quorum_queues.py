"""Quorum queues on one node, with pika: every message kept (persistent or not), RabbitMQ 4's
poison-message handling (a 0-9-1 requeue counts toward the delivery limit, 20 by default).

The cluster side (replicas, failover) is tests/cluster/test_replicated_queues.py."""

from __future__ import annotations

import pika
import pika.exceptions as pex
import pytest

from tests.support.clients import connect
from tests.support.http import call, q
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


def test_a_vhost_default_queue_type_makes_its_durable_queues_quorum(node):
    from tests.support.ctl import ctl_out

    vhost = uid("vh")
    ctl_out(node, "add_vhost", vhost, "--default-queue-type", "quorum", "--description", "orders")
    status, body = call(node.management_url, "GET", f"/api/vhosts/{q(vhost)}")
    assert status == 200 and body["default_queue_type"] == "quorum", body
    assert body["description"] == "orders" and body["metadata"]["default_queue_type"] == "quorum"
    conn = pika.BlockingConnection(pika.URLParameters(node.url + q(vhost)))
    ch = conn.channel()
    durable, transient = uid("d"), uid("t")
    ch.queue_declare(durable, durable=True)
    ch.queue_declare(transient, exclusive=True)
    types = {
        n: call(node.management_url, "GET", f"/api/queues/{q(vhost)}/{q(n)}")[1]["type"]
        for n in (durable, transient)
    }
    conn.close()
    assert types == {durable: "quorum", transient: "classic"}
    # The default vhost is untouched; a type Merpati has not is refused, saying which it has.
    ch = connect(node).channel()
    other = uid("c")
    ch.queue_declare(other, durable=True)
    assert call(node.management_url, "GET", f"/api/queues/%2F/{q(other)}")[1]["type"] == "classic"
    status, body = call(
        node.management_url, "PUT", f"/api/vhosts/{q(uid('s'))}", {"default_queue_type": "stream"}
    )
    assert status == 400 and "not one of classic, quorum" in body["reason"], body
    # Definitions carry it both ways.
    status, defs = call(node.management_url, "GET", "/api/definitions")
    exported = next(v for v in defs["vhosts"] if v["name"] == vhost)
    assert exported["metadata"]["default_queue_type"] == "quorum"
    again = uid("vh2")
    imported = {
        "vhosts": [{"name": again, "metadata": {"default_queue_type": "quorum"}}],
        "permissions": [
            {"user": "guest", "vhost": again, "configure": ".*", "write": ".*", "read": ".*"}
        ],
        "queues": [
            {"name": "jobs", "vhost": again, "durable": True, "auto_delete": False, "arguments": {}}
        ],
    }
    status, body = call(node.management_url, "POST", "/api/definitions", imported)
    assert status in (200, 201, 204), body
    assert call(node.management_url, "GET", f"/api/queues/{q(again)}/jobs")[1]["type"] == "quorum"


def refusal(node, declare) -> tuple[int, str]:
    """The channel close a declaration gets (the connection stays open)."""
    conn = connect(node)
    try:
        with pytest.raises(pex.ChannelClosedByBroker) as info:
            declare(conn.channel())
        assert conn.is_open
        return info.value.reply_code, info.value.reply_text
    finally:
        conn.close()


@pytest.mark.parametrize(
    "props,prop",
    [
        ({"durable": True, "exclusive": True}, "exclusive-owner"),
        ({"durable": False}, "non-durable"),
        ({"durable": True, "auto_delete": True}, "auto-delete"),
    ],
)
def test_a_temporary_quorum_queue_is_refused_as_rabbitmq_does(node, props, prop):
    name = uid("qq")
    code, text = refusal(node, lambda ch: ch.queue_declare(name, arguments=QUORUM, **props))
    assert (code, text) == (
        406,
        f"PRECONDITION_FAILED - invalid property '{prop}' for queue '{name}' in vhost '/'",
    )
    assert call(node.management_url, "GET", f"/api/queues/%2F/{q(name)}")[0] == 404


def test_a_quorum_queue_refuses_classic_only_arguments_and_a_server_name(node):
    name = uid("qq")
    code, text = refusal(
        node,
        lambda ch: ch.queue_declare(name, durable=True, arguments={**QUORUM, "x-max-priority": 10}),
    )
    assert (code, text) == (
        406,
        f"PRECONDITION_FAILED - invalid arg 'x-max-priority' for queue '{name}' in vhost '/' "
        "of queue type rabbit_quorum_queue",
    )
    code, text = refusal(node, lambda ch: ch.queue_declare("", durable=True, arguments=QUORUM))
    assert (code, text) == (
        406,
        "PRECONDITION_FAILED - Cannot declare a server-named queue for type rabbit_quorum_queue",
    )
    # The management API and definitions import refuse it with the same words.
    status, body = call(
        node.management_url,
        "PUT",
        f"/api/queues/%2F/{q(name)}",
        {"durable": False, "arguments": QUORUM},
    )
    assert status == 400
    assert body["reason"] == f"invalid property 'non-durable' for queue '{name}' in vhost '/'"
    status, body = call(
        node.management_url,
        "POST",
        "/api/definitions",
        {"queues": [{"name": name, "vhost": "/", "auto_delete": True, "arguments": QUORUM}]},
    )
    assert status == 400 and "invalid property 'auto-delete'" in body["reason"], body
    assert call(node.management_url, "GET", f"/api/queues/%2F/{q(name)}")[0] == 404


def test_a_quorum_queue_declared_properly_is_still_redeclared_and_found(node):
    conn = connect(node)
    ch = conn.channel()
    name = uid("qq")
    ch.queue_declare(name, durable=True, arguments={**QUORUM, "x-delivery-limit": 5})
    ch.queue_declare(name, durable=True, arguments={**QUORUM, "x-delivery-limit": 5})
    assert ch.queue_declare(name, passive=True).method.queue == name
    status, body = call(node.management_url, "GET", f"/api/queues/%2F/{q(name)}")
    assert status == 200 and body["type"] == "quorum"
    conn.close()


def test_a_quorum_default_keeps_temporary_queues_classic_and_checks_durable_ones(make_node):
    """--default-queue-type quorum: exclusive, auto-delete and non-durable queues declared
    without x-queue-type are classic queues (RabbitMQ does the same), never refused; a durable
    one becomes quorum, so an argument only classic queues take is refused as RabbitMQ does."""
    n = make_node("--default-queue-type", "quorum")
    conn = connect(n)
    ch = conn.channel()
    names = {}
    for kind, props in (
        ("exclusive", {"exclusive": True}),
        ("auto-delete", {"durable": True, "auto_delete": True}),
        ("transient", {"durable": False}),
    ):
        names[kind] = uid(kind)
        ch.queue_declare(names[kind], arguments={"x-max-priority": 5}, **props)
    server_named = ch.queue_declare("", exclusive=True).method.queue
    for name in [*names.values(), server_named]:
        status, body = call(n.management_url, "GET", f"/api/queues/%2F/{q(name)}")
        assert status == 200 and body["type"] == "classic", body
    conn.close()
    name = uid("prio")
    code, text = refusal(
        n, lambda ch: ch.queue_declare(name, durable=True, arguments={"x-max-priority": 5})
    )
    assert code == 406 and text.endswith("of queue type rabbit_quorum_queue")


def test_a_redelivery_from_a_quorum_queue_carries_x_delivery_count(node):
    """As RabbitMQ's quorum queues: no header on the first delivery, then the failed deliveries
    so far (reject or nack with requeue, and a consumer's channel closing with it unacked); the
    message's own headers stay. Classic queues add nothing."""
    conn = connect(node)
    ch = conn.channel()
    qq, classic = uid("qq"), uid("cq")
    ch.queue_declare(qq, durable=True, arguments=QUORUM)
    ch.queue_declare(classic)
    for name in (qq, classic):
        ch.basic_publish("", name, b"p", pika.BasicProperties(headers={"app": 1}))
    method, props, _body = ch.basic_get(qq, auto_ack=False)
    assert props.headers == {"app": 1}
    ch.basic_reject(method.delivery_tag, requeue=True)
    method, props, _body = ch.basic_get(qq, auto_ack=False)
    assert method.redelivered and props.headers == {"app": 1, "x-delivery-count": 1}
    ch.basic_reject(method.delivery_tag, requeue=True)
    method, props, _body = ch.basic_get(qq, auto_ack=False)
    assert props.headers["x-delivery-count"] == 2
    ch.basic_nack(method.delivery_tag, requeue=True)
    consumer = conn.channel()
    got = []
    consumer.basic_consume(qq, lambda c, m, p, b: got.append(p.headers))
    while not got:
        conn.process_data_events(time_limit=0.1)
    assert got == [{"app": 1, "x-delivery-count": 3}]
    consumer.close()  # the delivery unacked: counted, as a consumer going down is in RabbitMQ
    _m, props, _b = ch.basic_get(qq, auto_ack=True)
    assert props.headers["x-delivery-count"] == 4
    for _ in range(2):
        method, props, _body = ch.basic_get(classic, auto_ack=False)
        ch.basic_reject(method.delivery_tag, requeue=True)
    method, props, _body = ch.basic_get(classic, auto_ack=True)
    assert method.redelivered and props.headers == {"app": 1}
    conn.close()
