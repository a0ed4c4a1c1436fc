"""Queue features with real clients: dead-lettering, TTL, length limits, priorities, single active
consumer, alternate and delayed exchanges, queue expiry."""

from __future__ import annotations

import signal
import time

import pika
import pika.exceptions as pex
import pytest

from tests.support.clients import connect
from tests.support.ctl import ctl_out
from tests.support.names import uid

PERSISTENT = pika.BasicProperties(delivery_mode=2)


@pytest.fixture
def ch(node):
    conn = connect(node)
    yield conn.channel()
    if conn.is_open:
        conn.close()


def wait_get(ch, queue: str, timeout: float = 5.0):
    """basic.get until a message arrives (or timeout): (method, properties, body)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        method, props, body = ch.basic_get(queue, auto_ack=True)
        if method is not None:
            return method, props, body
        ch.connection.sleep(0.02)
    raise AssertionError(f"nothing arrived in {queue} within {timeout}s")


def count(ch, queue: str) -> int:
    return ch.queue_declare(queue, passive=True).method.message_count


def dlx_pair(ch, **queue_args):
    """A work queue dead-lettering to a fanout exchange with one bound queue."""
    dlx, dlq, work = uid("dlx"), uid("dlq"), uid("work")
    ch.exchange_declare(dlx, "fanout")
    ch.queue_declare(dlq)
    ch.queue_bind(dlq, dlx)
    ch.queue_declare(work, arguments={"x-dead-letter-exchange": dlx, **queue_args})
    return work, dlx, dlq


def test_rejected_message_is_dead_lettered_with_x_death(ch):
    work, dlx, dlq = dlx_pair(ch)
    ch.basic_publish("", work, b"poison", pika.BasicProperties(headers={"k": "v"}))
    method, _, _ = ch.basic_get(work)
    ch.basic_reject(method.delivery_tag, requeue=False)
    method, props, body = wait_get(ch, dlq)
    assert body == b"poison"
    assert method.exchange == dlx and method.routing_key == work
    death = props.headers["x-death"][0]
    assert death["reason"] == "rejected" and death["queue"] == work and death["count"] == 1
    assert death["exchange"] == "" and death["routing-keys"] == [work]
    assert props.headers["x-first-death-queue"] == work
    assert props.headers["x-first-death-reason"] == "rejected"
    assert props.headers["k"] == "v"
    assert count(ch, work) == 0


def test_nack_requeue_false_dead_letters_and_routing_key_override(ch):
    dlx, dlq, work = uid("dlx"), uid("dlq"), uid("work")
    ch.exchange_declare(dlx, "direct")
    ch.queue_declare(dlq)
    ch.queue_bind(dlq, dlx, "failed")
    ch.queue_declare(
        work, arguments={"x-dead-letter-exchange": dlx, "x-dead-letter-routing-key": "failed"}
    )
    ch.basic_publish("", work, b"a")
    method, _, _ = ch.basic_get(work)
    ch.basic_nack(method.delivery_tag, requeue=False)
    method, _, body = wait_get(ch, dlq)
    assert body == b"a" and method.routing_key == "failed"


def test_rejected_without_dlx_is_dropped(ch):
    q = uid("plain")
    ch.queue_declare(q)
    ch.basic_publish("", q, b"x")
    method, _, _ = ch.basic_get(q)
    ch.basic_reject(method.delivery_tag, requeue=False)
    assert count(ch, q) == 0


def test_queue_ttl_expires_and_dead_letters(ch):
    work, _dlx, dlq = dlx_pair(ch, **{"x-message-ttl": 200})
    t0 = time.monotonic()
    ch.basic_publish("", work, b"old")
    _, props, body = wait_get(ch, dlq, timeout=3)
    assert body == b"old"
    assert time.monotonic() - t0 >= 0.19
    assert props.headers["x-death"][0]["reason"] == "expired"
    assert count(ch, work) == 0


def test_per_message_ttl_expires_promptly_behind_a_long_lived_head(ch):
    """RabbitMQ classic queues only expire at the head; Merpati expires wherever the message is."""
    work, _dlx, dlq = dlx_pair(ch)
    ch.basic_publish("", work, b"long", pika.BasicProperties(expiration="60000"))
    ch.basic_publish("", work, b"short", pika.BasicProperties(expiration="150"))
    _, props, body = wait_get(ch, dlq, timeout=2)
    assert body == b"short"
    death = props.headers["x-death"][0]
    assert death["reason"] == "expired" and death["original-expiration"] == "150"
    assert props.expiration is None  # removed so it does not expire again downstream
    assert count(ch, work) == 1


def test_ttl_zero_expires_unless_delivered_at_once(ch):
    work, _dlx, dlq = dlx_pair(ch, **{"x-message-ttl": 0})
    ch.basic_publish("", work, b"nobody-home")
    _, _, body = wait_get(ch, dlq)
    assert body == b"nobody-home"
    got = []
    ch.basic_consume(work, lambda c, m, p, b: got.append(b), auto_ack=True)
    ch.basic_publish("", work, b"taken")
    deadline = time.monotonic() + 3
    while not got and time.monotonic() < deadline:
        ch.connection.process_data_events(time_limit=0.05)
    assert got == [b"taken"]


def test_queue_expires_when_unused(ch):
    q = uid("expiring")
    ch.queue_declare(q, arguments={"x-expires": 300})
    time.sleep(0.6)
    with pytest.raises(pex.ChannelClosedByBroker) as info:
        ch.queue_declare(q, passive=True)
    assert info.value.reply_code == 404


def test_queue_with_consumer_does_not_expire(ch):
    q = uid("kept")
    ch.queue_declare(q, arguments={"x-expires": 200})
    ch.basic_consume(q, lambda *a: None)
    ch.connection.process_data_events(time_limit=0.5)
    assert ch.queue_declare(q, passive=True).method.consumer_count == 1


def test_max_length_drop_head_dead_letters_oldest(ch):
    work, _dlx, dlq = dlx_pair(ch, **{"x-max-length": 3})
    for i in range(5):
        ch.basic_publish("", work, b"%d" % i)
    assert count(ch, work) == 3
    bodies = [ch.basic_get(work, auto_ack=True)[2] for _ in range(3)]
    assert bodies == [b"2", b"3", b"4"]
    dropped = [wait_get(ch, dlq)[2] for _ in range(2)]
    assert dropped == [b"0", b"1"]


def test_max_length_bytes(ch):
    q = uid("bytes")
    ch.queue_declare(q, arguments={"x-max-length-bytes": 10})
    for body in (b"aaaa", b"bbbb", b"cccc"):
        ch.basic_publish("", q, body)
    assert count(ch, q) == 2
    assert ch.basic_get(q, auto_ack=True)[2] == b"bbbb"


def test_reject_publish_nacks_the_publisher(ch):
    q = uid("full")
    ch.queue_declare(q, arguments={"x-max-length": 2, "x-overflow": "reject-publish"})
    ch.confirm_delivery()
    ch.basic_publish("", q, b"1")
    ch.basic_publish("", q, b"2")
    with pytest.raises(pex.NackError):
        ch.basic_publish("", q, b"3")
    assert count(ch, q) == 2
    ch.basic_get(q, auto_ack=True)
    ch.basic_publish("", q, b"4")  # room again: accepted
    assert [ch.basic_get(q, auto_ack=True)[2] for _ in range(2)] == [b"2", b"4"]


def test_reject_publish_dlx_nacks_and_dead_letters(ch):
    work, _dlx, dlq = dlx_pair(ch, **{"x-max-length": 1, "x-overflow": "reject-publish-dlx"})
    ch.confirm_delivery()
    ch.basic_publish("", work, b"kept")
    with pytest.raises(pex.NackError):
        ch.basic_publish("", work, b"refused")
    _, props, body = wait_get(ch, dlq)
    assert body == b"refused" and props.headers["x-death"][0]["reason"] == "maxlen"


def test_priority_queue_delivers_highest_first(ch):
    q = uid("prio")
    ch.queue_declare(q, arguments={"x-max-priority": 10})
    for i, p in enumerate([1, 5, 0, 9, 5, 20]):
        ch.basic_publish("", q, b"%d-%d" % (p, i), pika.BasicProperties(priority=p))
    bodies = [ch.basic_get(q, auto_ack=True)[2] for _ in range(6)]
    # 20 is capped at the queue's maximum (10), ahead of 9; equal priorities keep their order.
    assert bodies == [b"20-5", b"9-3", b"5-1", b"5-4", b"1-0", b"0-2"]


def test_priority_requeue_keeps_position_within_level(ch):
    q = uid("prio-rq")
    ch.queue_declare(q, arguments={"x-max-priority": 5})
    for i in range(3):
        ch.basic_publish("", q, b"%d" % i, pika.BasicProperties(priority=2))
    method, _, body = ch.basic_get(q)
    assert body == b"0"
    ch.basic_nack(method.delivery_tag, requeue=True)
    method, _, body = ch.basic_get(q, auto_ack=True)
    assert body == b"0" and method.redelivered


def test_single_active_consumer(node):
    conn = connect(node)
    ch = conn.channel()
    q = uid("sac")
    ch.queue_declare(q, arguments={"x-single-active-consumer": True})
    got: dict[str, list[bytes]] = {"a": [], "b": []}
    ta = ch.basic_consume(q, lambda c, m, p, b: got["a"].append(b), auto_ack=True)
    ch.basic_consume(q, lambda c, m, p, b: got["b"].append(b), auto_ack=True)
    for i in range(6):
        ch.basic_publish("", q, b"%d" % i)
    deadline = time.monotonic() + 3
    while len(got["a"]) < 6 and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.05)
    assert got == {"a": [b"%d" % i for i in range(6)], "b": []}
    ch.basic_cancel(ta)
    ch.basic_publish("", q, b"next")
    deadline = time.monotonic() + 3
    while not got["b"] and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.05)
    assert got["b"] == [b"next"]
    conn.close()


def test_alternate_exchange_takes_unroutable(ch):
    ae, aeq, main = uid("ae"), uid("aeq"), uid("main")
    ch.exchange_declare(ae, "fanout")
    ch.queue_declare(aeq)
    ch.queue_bind(aeq, ae)
    ch.exchange_declare(main, "direct", arguments={"alternate-exchange": ae})
    returned = []
    ch.add_on_return_callback(lambda *a: returned.append(a))
    ch.confirm_delivery()
    ch.basic_publish(main, "nowhere", b"lost?", mandatory=True)
    _, _, body = wait_get(ch, aeq)
    assert body == b"lost?" and not returned


def test_delayed_exchange_delivers_after_the_delay(ch):
    ex, q = uid("delayed"), uid("dq")
    ch.exchange_declare(ex, "x-delayed-message", arguments={"x-delayed-type": "direct"})
    ch.queue_declare(q)
    ch.queue_bind(q, ex, "k")
    ch.confirm_delivery()
    t0 = time.monotonic()
    ch.basic_publish(ex, "k", b"later", pika.BasicProperties(headers={"x-delay": 400}))
    ch.basic_publish(ex, "k", b"now")
    assert wait_get(ch, q)[2] == b"now"
    assert count(ch, q) == 0
    assert wait_get(ch, q)[2] == b"later"
    assert time.monotonic() - t0 >= 0.39


def test_delayed_exchange_requires_a_delayed_type(ch):
    with pytest.raises(pex.ChannelClosedByBroker) as info:
        ch.exchange_declare(uid("bad-delayed"), "x-delayed-message")
    assert info.value.reply_code == 406 and "x-delayed-type" in info.value.reply_text


def test_celery_style_retry_loop(ch):
    """reject -> DLX -> retry queue with TTL -> back to the work queue, counted in x-death."""
    work_x, retry_x, work, retry = uid("work-x"), uid("retry-x"), uid("work"), uid("retry")
    ch.exchange_declare(work_x, "direct")
    ch.exchange_declare(retry_x, "direct")
    ch.queue_declare(work, arguments={"x-dead-letter-exchange": retry_x})
    ch.queue_bind(work, work_x, "task")
    ch.queue_declare(retry, arguments={"x-dead-letter-exchange": work_x, "x-message-ttl": 100})
    ch.queue_bind(retry, retry_x, "task")
    ch.basic_publish(work_x, "task", b"flaky")
    attempts = 0
    while True:
        method, props, body = wait_get_manual(ch, work)
        attempts += 1
        if attempts < 3:
            ch.basic_reject(method.delivery_tag, requeue=False)
            continue
        ch.basic_ack(method.delivery_tag)
        break
    deaths = {(d["queue"], d["reason"]): d["count"] for d in props.headers["x-death"]}
    assert deaths == {(work, "rejected"): 2, (retry, "expired"): 2}
    assert body == b"flaky"


def wait_get_manual(ch, queue: str, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        method, props, body = ch.basic_get(queue, auto_ack=False)
        if method is not None:
            return method, props, body
        ch.connection.sleep(0.02)
    raise AssertionError(f"nothing arrived in {queue}")


def test_dead_letter_cycle_is_dropped(ch):
    q = uid("cycle")
    # Expired messages dead-letter back into the same queue: a cycle without rejection.
    ch.queue_declare(
        q,
        arguments={
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": q,
            "x-message-ttl": 50,
        },
    )
    ch.basic_publish("", q, b"round and round")
    time.sleep(0.4)
    assert count(ch, q) == 0


def test_inequivalent_arguments_are_406(ch):
    q = uid("args")
    ch.queue_declare(q, arguments={"x-max-length": 5})
    with pytest.raises(pex.ChannelClosedByBroker) as info:
        ch.queue_declare(q, arguments={"x-max-length": 6})
    assert info.value.reply_code == 406 and "x-max-length" in info.value.reply_text


def test_ttl_and_delay_survive_a_restart(make_node):
    n = make_node()
    conn = connect(n)
    ch = conn.channel()
    ch.exchange_declare("dlx-r", "fanout", durable=True)
    ch.queue_declare("dlq-r", durable=True)
    ch.queue_bind("dlq-r", "dlx-r")
    ch.queue_declare(
        "ttl-r", durable=True, arguments={"x-dead-letter-exchange": "dlx-r", "x-message-ttl": 1500}
    )
    ch.exchange_declare(
        "delay-r", "x-delayed-message", durable=True, arguments={"x-delayed-type": "fanout"}
    )
    ch.queue_declare("delayed-r", durable=True)
    ch.queue_bind("delayed-r", "delay-r")
    ch.confirm_delivery()
    ch.basic_publish("", "ttl-r", b"expire-me", PERSISTENT)
    ch.basic_publish(
        "delay-r", "", b"delay-me", pika.BasicProperties(delivery_mode=2, headers={"x-delay": 1500})
    )
    t0 = time.monotonic()
    n.stop(signal.SIGKILL)
    n.start()
    conn = connect(n)
    ch = conn.channel()
    _, props, body = wait_get(ch, "dlq-r", timeout=10)
    assert body == b"expire-me" and props.headers["x-death"][0]["reason"] == "expired"
    assert wait_get(ch, "delayed-r", timeout=10)[2] == b"delay-me"
    assert time.monotonic() - t0 >= 1.4
    # Exactly once: nothing left behind, nothing duplicated.
    assert count(ch, "ttl-r") == 0 and count(ch, "dlq-r") == 0 and count(ch, "delayed-r") == 0
    conn.close()


def test_dead_lettering_of_persistent_messages_survives_a_crash(make_node):
    n = make_node()
    conn = connect(n)
    ch = conn.channel()
    ch.exchange_declare("dlx-c", "fanout", durable=True)
    ch.queue_declare("dlq-c", durable=True)
    ch.queue_bind("dlq-c", "dlx-c")
    ch.queue_declare("work-c", durable=True, arguments={"x-dead-letter-exchange": "dlx-c"})
    ch.confirm_delivery()
    for i in range(50):
        ch.basic_publish("", "work-c", b"%d" % i, PERSISTENT)
    for _ in range(50):
        method, _, _ = ch.basic_get("work-c")
        ch.basic_reject(method.delivery_tag, requeue=False)
    ch.basic_publish("", "work-c", b"sync", PERSISTENT)  # confirmed: the rejections are committed
    n.stop(signal.SIGKILL)
    n.start()
    conn = connect(n)
    ch = conn.channel()
    assert count(ch, "dlq-c") == 50
    assert count(ch, "work-c") == 1
    conn.close()


def test_policy_applies_to_matching_queues_and_arguments_override(node):
    conn = connect(node)
    ch = conn.channel()
    prefix = uid("pol")
    ctl_out(
        node, "set_policy", prefix, f"^{prefix}\\.", '{"max-length": 2}', "--apply-to", "queues"
    )
    try:
        ch.queue_declare(f"{prefix}.limited")
        ch.queue_declare(f"{prefix}.own", arguments={"x-max-length": 1})
        ch.queue_declare(f"other-{prefix}")
        for q in (f"{prefix}.limited", f"{prefix}.own", f"other-{prefix}"):
            for i in range(4):
                ch.basic_publish("", q, b"%d" % i)
        assert count(ch, f"{prefix}.limited") == 2
        assert count(ch, f"{prefix}.own") == 1  # the stricter queue argument wins, as in RabbitMQ
        assert count(ch, f"other-{prefix}") == 4
        # A policy change applies to existing queues at once.
        ctl_out(
            node, "set_policy", prefix, f"^{prefix}\\.", '{"max-length": 1}', "--apply-to", "queues"
        )
        deadline = time.monotonic() + 3
        while count(ch, f"{prefix}.limited") != 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert count(ch, f"{prefix}.limited") == 1
    finally:
        ctl_out(node, "clear_policy", prefix)
        conn.close()


def test_policy_dead_letter_exchange_and_ttl(node):
    conn = connect(node)
    ch = conn.channel()
    prefix = uid("polttl")
    dlx, dlq = uid("pdlx"), uid("pdlq")
    ch.exchange_declare(dlx, "fanout")
    ch.queue_declare(dlq)
    ch.queue_bind(dlq, dlx)
    ctl_out(
        node,
        "set_policy",
        prefix,
        f"^{prefix}",
        f'{{"message-ttl": 100, "dead-letter-exchange": "{dlx}"}}',
    )
    try:
        ch.queue_declare(prefix)
        ch.basic_publish("", prefix, b"by-policy")
        _, props, body = wait_get(ch, dlq)
        assert body == b"by-policy" and props.headers["x-death"][0]["reason"] == "expired"
    finally:
        ctl_out(node, "clear_policy", prefix)
        conn.close()


def test_delayed_exchange_holds_a_message_published_through_the_management_api(node, ch):
    """The API publishes through the same path as the channels: an x-delay is honoured."""
    from tests.support.http import call, q

    ex, dq = uid("delayed-api"), uid("dq-api")
    ch.exchange_declare(ex, "x-delayed-message", arguments={"x-delayed-type": "direct"})
    ch.queue_declare(dq)
    ch.queue_bind(dq, ex, "k")
    t0 = time.monotonic()
    status, answer = call(
        f"http://127.0.0.1:{node.management_port}",
        "POST",
        f"/api/exchanges/%2F/{q(ex)}/publish",
        {
            "routing_key": "k",
            "payload": "later",
            "payload_encoding": "string",
            "properties": {"headers": {"x-delay": 500}},
        },
    )
    assert status == 200 and answer == {"routed": True}
    assert count(ch, dq) == 0  # held by the exchange, not routed at once
    assert wait_get(ch, dq)[2] == b"later"
    assert time.monotonic() - t0 >= 0.49
