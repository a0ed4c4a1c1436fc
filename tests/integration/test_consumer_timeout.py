"""The delivery acknowledgement timeout (RabbitMQ's consumer_timeout) with pika and a real node.

A node started with `--consumer-timeout 500` (ms) closes the channel of a delivery left
unacknowledged longer than that with 406 and RabbitMQ's text, and the message goes back to the
queue marked redelivered; `x-consumer-timeout` (or a consumer-timeout policy) on a queue
overrides the node's setting. Timeouts are short so each case takes about a second; nothing here
asserts a speed (bench/ and `merpati perf` measure those).
"""

from __future__ import annotations

import time

import pika
import pika.exceptions as pex
import pytest

from tests.support.clients import connect
from tests.support.http import call, q
from tests.support.names import uid

TIMEOUT_TEXT = (
    "PRECONDITION_FAILED - delivery acknowledgement on channel {ch} timed out. Timeout value "
    "used: {ms} ms. This timeout value can be configured, see consumers doc guide to learn more"
)
QUORUM = {"x-queue-type": "quorum"}


@pytest.fixture(scope="module")
def short(request):
    """A node whose deliveries time out after 500 ms unless their queue says otherwise."""
    from tests.support.node import NodeProcess

    n = NodeProcess("--consumer-timeout", "500").start()
    yield n
    n.stop()
    assert "Traceback" not in n.log(), n.log()
    n.discard(keep=request.session.testsfailed > 0)


def consume_without_acking(ch, queue: str, limit: float = 10.0) -> pex.ChannelClosedByBroker:
    """Consume from `queue` and never ack: what closes the channel (within `limit` seconds)."""
    got: list[bytes] = []
    ch.basic_consume(queue, lambda _ch, _m, _p, body: got.append(body), auto_ack=False)
    ch.connection.call_later(limit, ch.stop_consuming)  # a safety net, should it never close
    with pytest.raises(pex.ChannelClosedByBroker) as info:
        ch.start_consuming()
    assert got, "the consumer never got its delivery"
    return info.value


def redelivered(node, queue: str) -> tuple[bool, bytes]:
    """Another connection's consumer gets the message back: (redelivered, body)."""
    conn = connect(node)
    try:
        ch = conn.channel()
        for method, _props, body in ch.consume(queue, auto_ack=True, inactivity_timeout=5):
            assert method is not None, f"nothing came back to {queue}"
            return method.redelivered, body
        raise AssertionError("unreachable")
    finally:
        conn.close()


@pytest.mark.parametrize("arguments", [{}, QUORUM], ids=["classic", "quorum"])
def test_a_consumer_that_never_acks_loses_its_channel_and_the_message_is_redelivered(
    short, arguments
):
    name = uid("ct")
    conn = connect(short)
    ch = conn.channel()
    ch.queue_declare(name, durable=bool(arguments), arguments=arguments)
    other = conn.channel()  # the timeout is the channel's business: this one stays open
    ch.basic_publish("", name, b"stuck")
    started = time.monotonic()
    error = consume_without_acking(ch, name)
    assert time.monotonic() - started >= 0.5  # never before the timeout
    assert (error.reply_code, error.reply_text) == (406, TIMEOUT_TEXT.format(ch=1, ms=500))
    assert conn.is_open and other.is_open
    assert other.queue_declare(name, passive=True).method.message_count == 1
    assert redelivered(short, name) == (True, b"stuck")
    conn.close()
    assert "has timed out waiting for a consumer acknowledgement" in short.log()


def test_basic_get_without_ack_times_out_too(short):
    name = uid("ct")
    conn = connect(short)
    ch = conn.channel()
    ch.queue_declare(name)
    ch.basic_publish("", name, b"got")
    method, _props, body = ch.basic_get(name, auto_ack=False)
    assert body == b"got" and not method.redelivered
    deadline = time.monotonic() + 10
    while ch.is_open and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.05)
    assert ch.is_closed and conn.is_open
    assert redelivered(short, name) == (True, b"got")
    conn.close()


def test_a_consumer_that_acks_is_never_closed(short):
    """Two seconds (four timeouts) of deliveries, each acked at once, and a basic.get acked in
    time: the channel stays open."""
    name = uid("ct")
    conn = connect(short)
    ch = conn.channel()
    ch.queue_declare(name)
    ch.basic_qos(prefetch_count=10)
    got: list[bytes] = []

    def on_message(c, method, _props, body):
        got.append(body)
        c.basic_ack(method.delivery_tag)

    ch.basic_consume(name, on_message, auto_ack=False)
    pub = connect(short)
    pch = pub.channel()
    for i in range(20):
        pch.basic_publish("", name, b"%d" % i)
        conn.process_data_events(time_limit=0.1)
    conn.process_data_events(time_limit=0.5)
    assert len(got) == 20
    assert ch.is_open and conn.is_open
    get_ch = conn.channel()
    get_name = uid("ct-get")
    get_ch.queue_declare(get_name)
    for _ in range(4):
        pch.basic_publish("", get_name, b"g")
        method = None
        while method is None:
            method, _props, _body = get_ch.basic_get(get_name, auto_ack=False)
        conn.process_data_events(time_limit=0.2)  # held a while, acked well in time
        get_ch.basic_ack(method.delivery_tag)
    conn.process_data_events(time_limit=0.5)
    assert ch.is_open and get_ch.is_open
    pub.close()
    conn.close()


def test_x_consumer_timeout_on_a_queue_overrides_the_node_setting(node, short):
    # The shared node has RabbitMQ's 30 minutes: the queue's 500 ms applies.
    name = uid("ct")
    conn = connect(node)
    ch = conn.channel()
    ch.queue_declare(name, arguments={"x-consumer-timeout": 500})
    ch.basic_publish("", name, b"m")
    error = consume_without_acking(ch, name)
    assert error.reply_text == TIMEOUT_TEXT.format(ch=1, ms=500)
    conn.close()
    # The other way round: a queue allowing a minute on the 500 ms node.
    conn = connect(short)
    ch = conn.channel()
    ch.queue_declare(name, arguments={"x-consumer-timeout": 60_000})
    ch.basic_publish("", name, b"m")
    got: list[bytes] = []
    ch.basic_consume(name, lambda _c, _m, _p, body: got.append(body), auto_ack=False)
    conn.process_data_events(time_limit=1.5)
    assert got == [b"m"] and ch.is_open
    conn.close()


def test_a_consumer_timeout_policy_applies(node):
    name = uid("ctpol")
    status, _ = call(
        node.management_url,
        "PUT",
        f"/api/policies/{q('/')}/{name}",
        {"pattern": f"^{name}$", "definition": {"consumer-timeout": 500}, "apply-to": "queues"},
    )
    assert status in (201, 204)
    try:
        conn = connect(node)
        ch = conn.channel()
        ch.queue_declare(name)
        ch.basic_publish("", name, b"m")
        error = consume_without_acking(ch, name)
        assert error.reply_text == TIMEOUT_TEXT.format(ch=1, ms=500)
        conn.close()
    finally:
        call(node.management_url, "DELETE", f"/api/policies/{q('/')}/{name}")


@pytest.mark.parametrize(
    "value, why",
    [("soon", "expected an integer, got 'soon'"), (-1, "value -1 is out of range")],
)
def test_a_bad_x_consumer_timeout_is_406_on_declare(node, value, why):
    name = uid("ct")
    conn = connect(node)
    ch = conn.channel()
    with pytest.raises(pex.ChannelClosedByBroker) as info:
        ch.queue_declare(name, arguments={"x-consumer-timeout": value})
    assert info.value.reply_code == 406
    assert info.value.reply_text == (
        f"PRECONDITION_FAILED - invalid arg 'x-consumer-timeout' for queue '{name}' in vhost "
        f"'/': {why}"
    )
    ch = conn.channel()
    with pytest.raises(pex.ChannelClosedByBroker):
        ch.queue_declare(name, passive=True)  # nothing was declared
    conn.close()


def test_persistent_messages_survive_the_timeout_unchanged(short):
    name = uid("ct")
    conn = connect(short)
    ch = conn.channel()
    ch.queue_declare(name, durable=True)
    props = pika.BasicProperties(delivery_mode=2, headers={"k": "v"}, message_id="m1")
    ch.basic_publish("", name, b"keep", props)
    consume_without_acking(ch, name)
    conn.close()
    conn = connect(short)
    method, got_props, body = conn.channel().basic_get(name, auto_ack=True)
    assert method.redelivered and body == b"keep"
    assert got_props.headers == {"k": "v"} and got_props.message_id == "m1"
    conn.close()
