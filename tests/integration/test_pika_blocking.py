"""pika BlockingConnection against a real node: what a RabbitMQ 3.x user of pika relies on.

Every test uses its own queue/exchange names (uuid) so tests can share the session node. Where a
test has to show that something did *not* happen (prefetch limits), it does a synchronous round
trip on the same connection first: the node handles a connection's frames in order and sends every
delivery it is going to make before the reply, so once the reply is in, pending deliveries are too.
"""

from __future__ import annotations

import socket
import struct
import time
import uuid

import pika
import pika.exceptions as pex
import pytest

from tests.support.clients import connect
from tests.support.names import uid

# -- helpers ----------------------------------------------------------------------------------


def drain(conn: pika.BlockingConnection, until, timeout: float = 3.0) -> bool:
    """Process I/O until `until()` is true (the awaited event) or the timeout passes."""
    deadline = time.monotonic() + timeout
    while not until():
        if time.monotonic() > deadline:
            return False
        conn.process_data_events(time_limit=0.05)
    return True


def settle_in(conn: pika.BlockingConnection) -> None:
    """A round trip on the connection, then dispatch whatever arrived before its reply."""
    conn.channel().close()
    conn.process_data_events(time_limit=0)


def get_body(ch, queue: str, auto_ack: bool = True):
    method, props, body = ch.basic_get(queue, auto_ack=auto_ack)
    return (method, props, body) if not auto_ack else body


def count(ch, queue: str) -> int:
    return ch.queue_declare(queue, passive=True).method.message_count


@pytest.fixture
def conn(node):
    c = connect(node)
    yield c
    if c.is_open:
        c.close()


@pytest.fixture
def ch(conn):
    return conn.channel()


def declare_queue(ch, name: str | None = None, **kw) -> str:
    return ch.queue_declare(name or uid("q"), **kw).method.queue


# -- exchange types ---------------------------------------------------------------------------


def test_default_exchange_routes_by_queue_name(ch):
    q = declare_queue(ch, auto_delete=False)
    ch.basic_publish("", q, b"hello")
    assert get_body(ch, q) == b"hello"
    # An unknown routing key on the default exchange goes nowhere.
    ch.basic_publish("", uid("nothere"), b"x")
    assert ch.basic_get(q, auto_ack=True) == (None, None, None)
    ch.queue_delete(q)


def test_default_exchange_cannot_be_bound(conn, ch):
    q = declare_queue(ch)
    with pytest.raises(pex.ChannelClosedByBroker) as ei:
        ch.queue_bind(q, "", routing_key="k")
    assert ei.value.reply_code == 403


def test_direct_exchange(ch):
    ex = uid("direct")
    ch.exchange_declare(ex, "direct")
    qa, qb = declare_queue(ch), declare_queue(ch)
    ch.queue_bind(qa, ex, "a")
    ch.queue_bind(qb, ex, "b")
    ch.queue_bind(qb, ex, "both")
    ch.queue_bind(qa, ex, "both")
    ch.confirm_delivery()
    ch.basic_publish(ex, "a", b"to-a")
    ch.basic_publish(ex, "b", b"to-b")
    ch.basic_publish(ex, "both", b"to-both")
    ch.basic_publish(ex, "c", b"to-none")
    assert [get_body(ch, qa), get_body(ch, qa), get_body(ch, qa)] == [b"to-a", b"to-both", None]
    assert [get_body(ch, qb), get_body(ch, qb), get_body(ch, qb)] == [b"to-b", b"to-both", None]
    ch.exchange_delete(ex)


def test_fanout_exchange_ignores_routing_key(ch):
    ex = uid("fanout")
    ch.exchange_declare(ex, "fanout")
    qs = [declare_queue(ch) for _ in range(3)]
    for q in qs:
        ch.queue_bind(q, ex, routing_key=uid("ignored"))
    ch.confirm_delivery()
    ch.basic_publish(ex, "whatever", b"all")
    for q in qs:
        assert get_body(ch, q) == b"all"
        assert get_body(ch, q) is None


@pytest.mark.parametrize(
    "binding, key, matches",
    [
        ("a.*.c", "a.b.c", True),
        ("a.*.c", "a.c", False),
        ("a.*.c", "a.b.b.c", False),
        ("*", "a", True),
        ("*", "", False),
        ("*", "a.b", False),
        ("a.#", "a", True),  # '#' matches zero words
        ("a.#", "a.b.c", True),
        ("a.#", "b.a", False),
        ("#.z", "z", True),
        ("a.#.z", "a.z", True),
        ("a.#.z", "a.b.c.z", True),
        ("#", "", True),
        ("#", "x.y.z", True),
        ("*.#", "", False),
        ("*.#", "x", True),
        ("a.*.#", "a.b", True),
        ("a.b", "a.b", True),
        ("a.b", "a.bc", False),
    ],
)
def test_topic_exchange_patterns(ch, binding, key, matches):
    ex = uid("topic")
    ch.exchange_declare(ex, "topic", auto_delete=True)
    q = declare_queue(ch, exclusive=True)
    ch.queue_bind(q, ex, binding)
    ch.confirm_delivery()
    ch.basic_publish(ex, key, b"m")
    assert (get_body(ch, q) == b"m") is matches
    ch.exchange_delete(ex)


def test_topic_exchange_multiple_bindings_deliver_once(ch):
    ex = uid("topic")
    ch.exchange_declare(ex, "topic")
    q = declare_queue(ch, exclusive=True)
    ch.queue_bind(q, ex, "stock.#")
    ch.queue_bind(q, ex, "*.usd.*")
    ch.queue_bind(q, ex, "#")
    ch.confirm_delivery()
    ch.basic_publish(ex, "stock.usd.nyse", b"once")
    assert get_body(ch, q) == b"once"
    assert get_body(ch, q) is None
    ch.exchange_delete(ex)


def test_headers_exchange_all_and_any(ch):
    ex = uid("headers")
    ch.exchange_declare(ex, "headers")
    q_all, q_any = declare_queue(ch, exclusive=True), declare_queue(ch, exclusive=True)
    ch.queue_bind(q_all, ex, arguments={"x-match": "all", "format": "pdf", "type": "report"})
    ch.queue_bind(q_any, ex, arguments={"x-match": "any", "format": "pdf", "type": "log"})
    ch.confirm_delivery()

    def pub(body: bytes, headers: dict | None) -> None:
        ch.basic_publish(ex, "", body, pika.BasicProperties(headers=headers))

    pub(b"both", {"format": "pdf", "type": "report"})  # all: yes, any: yes (format)
    pub(b"fmt-only", {"format": "pdf"})  # all: no,  any: yes
    pub(b"log", {"format": "zip", "type": "log"})  # all: no,  any: yes (type)
    pub(b"none", {"format": "zip", "type": "report2"})  # all: no,  any: no
    pub(b"noheaders", None)  # neither
    pub(b"extra", {"format": "pdf", "type": "report", "x": 1})  # all: yes, any: yes
    got_all = [get_body(ch, q_all) for _ in range(3)]
    got_any = [get_body(ch, q_any) for _ in range(5)]
    assert got_all == [b"both", b"extra", None]
    assert got_any == [b"both", b"fmt-only", b"log", b"extra", None]
    ch.exchange_delete(ex)


def test_headers_exchange_default_match_is_all(ch):
    ex = uid("headers")
    ch.exchange_declare(ex, "headers")
    q = declare_queue(ch, exclusive=True)
    ch.queue_bind(q, ex, arguments={"a": 1, "b": "two"})
    ch.confirm_delivery()
    ch.basic_publish(ex, "", b"one", pika.BasicProperties(headers={"a": 1}))
    ch.basic_publish(ex, "", b"both", pika.BasicProperties(headers={"a": 1, "b": "two"}))
    assert get_body(ch, q) == b"both"
    assert get_body(ch, q) is None
    ch.exchange_delete(ex)


def test_exchange_to_exchange_binding(ch):
    src, dst_topic, dst_fanout = uid("e2e-src"), uid("e2e-topic"), uid("e2e-fan")
    ch.exchange_declare(src, "direct")
    ch.exchange_declare(dst_topic, "topic")
    ch.exchange_declare(dst_fanout, "fanout")
    q_topic, q_fan, q_direct = (declare_queue(ch, exclusive=True) for _ in range(3))
    ch.exchange_bind(destination=dst_topic, source=src, routing_key="orders.eu")
    ch.exchange_bind(destination=dst_fanout, source=dst_topic, routing_key="orders.*")
    ch.queue_bind(q_topic, dst_topic, "orders.#")
    ch.queue_bind(q_fan, dst_fanout, "")
    ch.queue_bind(q_direct, src, "orders.eu")
    ch.confirm_delivery()
    ch.basic_publish(src, "orders.eu", b"chained")
    ch.basic_publish(src, "orders.us", b"not-bound")
    for q in (q_topic, q_fan, q_direct):
        assert get_body(ch, q) == b"chained"
        assert get_body(ch, q) is None
    # After unbinding, the chain is cut.
    ch.exchange_unbind(destination=dst_topic, source=src, routing_key="orders.eu")
    ch.basic_publish(src, "orders.eu", b"after-unbind")
    assert get_body(ch, q_direct) == b"after-unbind"
    assert get_body(ch, q_topic) is None
    assert get_body(ch, q_fan) is None
    for ex in (src, dst_topic, dst_fanout):
        ch.exchange_delete(ex)


def test_exchange_bind_to_missing_exchange_is_404(ch):
    src = uid("e2e-src")
    ch.exchange_declare(src, "fanout", auto_delete=True)
    with pytest.raises(pex.ChannelClosedByBroker) as ei:
        ch.exchange_bind(destination=uid("missing"), source=src)
    assert ei.value.reply_code == 404


# -- publisher confirms and returns -----------------------------------------------------------


def test_publisher_confirms_ack(ch):
    q = declare_queue(ch, exclusive=True)
    ch.confirm_delivery()
    for i in range(50):
        ch.basic_publish("", q, f"m{i}".encode())  # raises NackError/UnroutableError on failure
    assert count(ch, q) == 50


def test_mandatory_unroutable_raises_with_confirms(ch):
    ex = uid("direct")
    ch.exchange_declare(ex, "direct", auto_delete=True)
    q = declare_queue(ch, exclusive=True)
    ch.queue_bind(q, ex, "known")
    ch.confirm_delivery()
    with pytest.raises(pex.UnroutableError) as ei:
        ch.basic_publish(ex, "unknown", b"lost", mandatory=True)
    [returned] = ei.value.messages
    assert returned.method.reply_code == 312
    assert returned.method.reply_text == "NO_ROUTE"
    assert returned.method.exchange == ex
    assert returned.method.routing_key == "unknown"
    assert returned.body == b"lost"
    # Routable mandatory publish is fine, non-mandatory unroutable is silently dropped.
    ch.basic_publish(ex, "known", b"ok", mandatory=True)
    ch.basic_publish(ex, "unknown", b"dropped")
    assert get_body(ch, q) == b"ok"
    ch.exchange_delete(ex)


def test_mandatory_unroutable_on_return_callback(conn, ch):
    returned = []
    ch.add_on_return_callback(lambda c, method, props, body: returned.append((method, props, body)))
    ch.basic_publish(
        "",
        uid("no-such-queue"),
        b"back",
        pika.BasicProperties(message_id="m-1", headers={"h": "v"}),
        mandatory=True,
    )
    assert drain(conn, lambda: returned)
    method, props, body = returned[0]
    assert (method.reply_code, method.reply_text, body) == (312, "NO_ROUTE", b"back")
    assert props.message_id == "m-1"
    assert props.headers == {"h": "v"}


def test_publish_to_missing_exchange_closes_channel_404(conn):
    ch = conn.channel()
    ch.confirm_delivery()
    with pytest.raises(pex.ChannelClosedByBroker) as ei:
        ch.basic_publish(uid("missing-ex"), "k", b"x")
    assert ei.value.reply_code == 404
    assert conn.is_open


# -- basic.get --------------------------------------------------------------------------------


def test_basic_get_and_get_empty(ch):
    q = declare_queue(ch, exclusive=True)
    assert ch.basic_get(q) == (None, None, None)
    ch.confirm_delivery()
    props = pika.BasicProperties(
        content_type="text/plain",
        delivery_mode=2,
        priority=3,
        correlation_id="c1",
        reply_to="r",
        headers={"n": 7, "s": "str"},
    )
    ch.basic_publish("", q, b"first", props)
    ch.basic_publish("", q, b"second")
    method, p, body = ch.basic_get(q, auto_ack=False)
    assert body == b"first"
    assert method.message_count == 1
    assert method.redelivered is False
    assert method.exchange == "" and method.routing_key == q
    assert (p.content_type, p.delivery_mode, p.priority, p.correlation_id, p.reply_to) == (
        "text/plain",
        2,
        3,
        "c1",
        "r",
    )
    assert p.headers == {"n": 7, "s": "str"}
    ch.basic_ack(method.delivery_tag)
    method, _, body = ch.basic_get(q, auto_ack=True)
    assert body == b"second" and method.message_count == 0
    assert ch.basic_get(q) == (None, None, None)


def test_large_message_spans_frames(ch):
    q = declare_queue(ch, exclusive=True)
    ch.confirm_delivery()
    body = bytes(range(256)) * 2000  # 512000 bytes > frame_max
    ch.basic_publish("", q, body)
    assert get_body(ch, q) == body


# -- ack / nack / reject ----------------------------------------------------------------------


def test_ack_removes_message(conn, ch):
    q = declare_queue(ch, exclusive=True)
    ch.basic_publish("", q, b"m")
    method, _, _ = ch.basic_get(q, auto_ack=False)
    ch.basic_ack(method.delivery_tag)
    settle_in(conn)
    assert count(ch, q) == 0
    ch.close()
    ch2 = conn.channel()
    assert ch2.basic_get(q) == (None, None, None)


@pytest.mark.parametrize("how", ["nack", "reject"])
def test_requeue_true_sets_redelivered(ch, how):
    q = declare_queue(ch, exclusive=True)
    ch.basic_publish("", q, b"m")
    method, _, _ = ch.basic_get(q, auto_ack=False)
    assert method.redelivered is False
    if how == "nack":
        ch.basic_nack(method.delivery_tag, requeue=True)
    else:
        ch.basic_reject(method.delivery_tag, requeue=True)
    method, _, body = ch.basic_get(q, auto_ack=False)
    assert body == b"m"
    assert method.redelivered is True
    ch.basic_ack(method.delivery_tag)
    assert ch.basic_get(q) == (None, None, None)


@pytest.mark.parametrize("how", ["nack", "reject"])
def test_requeue_false_drops(ch, how):
    q = declare_queue(ch, exclusive=True)
    ch.basic_publish("", q, b"m1")
    ch.basic_publish("", q, b"m2")
    method, _, _ = ch.basic_get(q, auto_ack=False)
    if how == "nack":
        ch.basic_nack(method.delivery_tag, requeue=False)
    else:
        ch.basic_reject(method.delivery_tag, requeue=False)
    method, _, body = ch.basic_get(q, auto_ack=True)
    assert body == b"m2" and method.redelivered is False
    assert ch.basic_get(q) == (None, None, None)


def test_requeued_message_returns_to_original_position(ch):
    q = declare_queue(ch, exclusive=True)
    for b in (b"m1", b"m2", b"m3"):
        ch.basic_publish("", q, b)
    method, _, body = ch.basic_get(q, auto_ack=False)
    assert body == b"m1"
    ch.basic_nack(method.delivery_tag, requeue=True)
    got = []
    for _ in range(3):
        method, _, body = ch.basic_get(q, auto_ack=True)
        got.append((body, method.redelivered))
    assert got == [(b"m1", True), (b"m2", False), (b"m3", False)]


def test_nack_multiple_requeue_keeps_order(ch):
    q = declare_queue(ch, exclusive=True)
    for i in range(5):
        ch.basic_publish("", q, f"m{i}".encode())
    tags = [ch.basic_get(q, auto_ack=False)[0].delivery_tag for _ in range(3)]
    ch.basic_nack(tags[-1], multiple=True, requeue=True)
    got = []
    for _ in range(5):
        method, _, body = ch.basic_get(q, auto_ack=True)
        got.append((body, method.redelivered))
    assert got == [(b"m0", True), (b"m1", True), (b"m2", True), (b"m3", False), (b"m4", False)]


def test_ack_multiple(conn, ch):
    q = declare_queue(ch, exclusive=True)
    for i in range(4):
        ch.basic_publish("", q, f"m{i}".encode())
    tags = [ch.basic_get(q, auto_ack=False)[0].delivery_tag for _ in range(4)]
    ch.basic_ack(tags[2], multiple=True)
    ch.close()  # releases only the one still unacked
    ch2 = conn.channel()
    method, _, body = ch2.basic_get(q, auto_ack=True)
    assert (body, method.redelivered) == (b"m3", True)
    assert ch2.basic_get(q) == (None, None, None)


def test_unknown_delivery_tag_is_406(conn, ch):
    q = declare_queue(ch, exclusive=True)
    ch.basic_ack(999)
    with pytest.raises(pex.ChannelClosedByBroker) as ei:
        ch.queue_declare(q, passive=True)  # the round trip that surfaces the async channel.close
    assert ei.value.reply_code == 406
    assert conn.is_open


def test_consumer_ack_nack_reject_redelivered_flag(conn, ch):
    q = declare_queue(ch, exclusive=True)
    for b in (b"ack", b"nack", b"reject"):
        ch.basic_publish("", q, b)
    seen = []

    def on_msg(c, method, props, body):
        seen.append((body, method.redelivered))
        if method.redelivered or body == b"ack":
            c.basic_ack(method.delivery_tag)
        elif body == b"nack":
            c.basic_nack(method.delivery_tag, requeue=True)
        else:
            c.basic_reject(method.delivery_tag, requeue=True)

    ch.basic_consume(q, on_msg)
    assert drain(conn, lambda: len(seen) >= 5)
    assert seen[:3] == [(b"ack", False), (b"nack", False), (b"reject", False)]
    assert sorted(seen[3:]) == [(b"nack", True), (b"reject", True)]
    settle_in(conn)
    assert count(ch, q) == 0


# -- prefetch ---------------------------------------------------------------------------------


def test_prefetch_count_limits_unacked_deliveries(conn, ch):
    q = declare_queue(ch, exclusive=True)
    for i in range(6):
        ch.basic_publish("", q, f"m{i}".encode())
    ch.basic_qos(prefetch_count=2)
    got = []
    ch.basic_consume(q, lambda c, m, p, b: got.append((m.delivery_tag, b)))
    assert drain(conn, lambda: len(got) >= 2)
    settle_in(conn)
    assert [b for _, b in got] == [b"m0", b"m1"]
    assert count(ch, q) == 4
    ch.basic_ack(got[0][0])
    assert drain(conn, lambda: len(got) >= 3)
    settle_in(conn)
    assert [b for _, b in got] == [b"m0", b"m1", b"m2"]
    ch.basic_ack(got[2][0], multiple=True)
    assert drain(conn, lambda: len(got) >= 5)
    settle_in(conn)
    assert [b for _, b in got] == [b"m0", b"m1", b"m2", b"m3", b"m4"]
    ch.basic_ack(got[4][0], multiple=True)
    assert drain(conn, lambda: len(got) >= 6)
    assert got[5][1] == b"m5"


def test_prefetch_zero_is_unlimited(conn, ch):
    q = declare_queue(ch, exclusive=True)
    for i in range(20):
        ch.basic_publish("", q, f"m{i}".encode())
    ch.basic_qos(prefetch_count=0)
    got = []
    ch.basic_consume(q, lambda c, m, p, b: got.append(b))
    assert drain(conn, lambda: len(got) == 20)


def test_prefetch_applies_per_consumer(conn, ch):
    q1, q2 = declare_queue(ch, exclusive=True), declare_queue(ch, exclusive=True)
    for _i in range(5):
        ch.basic_publish("", q1, b"a")
        ch.basic_publish("", q2, b"b")
    ch.basic_qos(prefetch_count=2)
    got = []
    ch.basic_consume(q1, lambda c, m, p, b: got.append(b))
    ch.basic_consume(q2, lambda c, m, p, b: got.append(b))
    assert drain(conn, lambda: len(got) >= 4)
    settle_in(conn)
    assert sorted(got) == [b"a", b"a", b"b", b"b"]


def test_global_qos_limits_channel(conn, ch):
    q1, q2 = declare_queue(ch, exclusive=True), declare_queue(ch, exclusive=True)
    for _i in range(5):
        ch.basic_publish("", q1, b"a")
        ch.basic_publish("", q2, b"b")
    ch.basic_qos(prefetch_count=3, global_qos=True)
    got = []
    ch.basic_consume(q1, lambda c, m, p, b: got.append((m.delivery_tag, b)))
    ch.basic_consume(q2, lambda c, m, p, b: got.append((m.delivery_tag, b)))
    assert drain(conn, lambda: len(got) >= 3)
    settle_in(conn)
    assert len(got) == 3
    assert count(ch, q1) + count(ch, q2) == 7
    ch.basic_ack(got[0][0])
    assert drain(conn, lambda: len(got) >= 4)
    settle_in(conn)
    assert len(got) == 4


def test_global_and_per_consumer_qos_combined(conn, ch):
    q1, q2 = declare_queue(ch, exclusive=True), declare_queue(ch, exclusive=True)
    for _i in range(5):
        ch.basic_publish("", q1, b"a")
        ch.basic_publish("", q2, b"b")
    ch.basic_qos(prefetch_count=3, global_qos=True)  # channel-wide
    ch.basic_qos(prefetch_count=1)  # per consumer
    got = []
    ch.basic_consume(q1, lambda c, m, p, b: got.append(b))
    ch.basic_consume(q2, lambda c, m, p, b: got.append(b))
    assert drain(conn, lambda: len(got) >= 2)
    settle_in(conn)
    assert sorted(got) == [b"a", b"b"]


def test_raising_prefetch_releases_more(conn, ch):
    q = declare_queue(ch, exclusive=True)
    for i in range(5):
        ch.basic_publish("", q, f"m{i}".encode())
    ch.basic_qos(prefetch_count=1, global_qos=True)
    got = []
    ch.basic_consume(q, lambda c, m, p, b: got.append(b))
    assert drain(conn, lambda: got)
    settle_in(conn)
    assert got == [b"m0"]
    ch.basic_qos(prefetch_count=3, global_qos=True)
    assert drain(conn, lambda: len(got) >= 3)
    settle_in(conn)
    assert got == [b"m0", b"m1", b"m2"]


# -- queue semantics --------------------------------------------------------------------------


def test_server_named_queue(conn, ch):
    r = ch.queue_declare("", exclusive=True)
    name = r.method.queue
    assert name.startswith("amq.gen-")
    assert len(name) > len("amq.gen-") + 10
    other = ch.queue_declare("", exclusive=True).method.queue
    assert other != name
    ch.basic_publish("", name, b"x")
    assert get_body(ch, name) == b"x"


def test_declare_ok_reports_counts(conn, ch):
    q = declare_queue(ch, exclusive=True)
    for _ in range(3):
        ch.basic_publish("", q, b"x")
    r = ch.queue_declare(q, passive=True)
    assert (r.method.message_count, r.method.consumer_count) == (3, 0)
    ch2 = conn.channel()
    ch2.basic_qos(prefetch_count=1)
    ch2.basic_consume(q, lambda *a: None)
    r = ch.queue_declare(q, passive=True)
    assert (r.method.message_count, r.method.consumer_count) == (2, 1)


def test_exclusive_queue_locked_to_owner_and_deleted_on_close(node):
    owner = connect(node)
    och = owner.channel()
    q = uid("excl")
    och.queue_declare(q, exclusive=True)
    other = connect(node)
    try:
        for op in ("declare", "passive", "consume", "get", "bind", "delete", "purge"):
            och2 = other.channel()
            with pytest.raises(pex.ChannelClosedByBroker) as ei:
                if op == "declare":
                    och2.queue_declare(q, exclusive=True)
                elif op == "passive":
                    och2.queue_declare(q, passive=True)
                elif op == "consume":
                    och2.basic_consume(q, lambda *a: None)
                elif op == "get":
                    och2.basic_get(q)
                elif op == "bind":
                    och2.queue_bind(q, "amq.fanout")
                elif op == "delete":
                    och2.queue_delete(q)
                else:
                    och2.queue_purge(q)
            assert ei.value.reply_code == 405, op
            assert "RESOURCE_LOCKED" in ei.value.reply_text
        # The owner still uses it.
        och.basic_publish("", q, b"mine")
        assert get_body(och, q) == b"mine"
        owner.close()
        ch2 = other.channel()
        deadline = time.monotonic() + 3
        while True:
            try:
                ch2.queue_declare(q, passive=True)
            except pex.ChannelClosedByBroker as e:
                assert e.reply_code == 404
                break
            assert time.monotonic() < deadline, "exclusive queue survived its owner's connection"
            other.process_data_events(time_limit=0.05)
            ch2 = other.channel() if ch2.is_closed else ch2
    finally:
        if owner.is_open:
            owner.close()
        other.close()


def test_exclusive_queue_deleted_when_owner_connection_dies(node):
    owner = connect(node)
    q = uid("excl")
    owner.channel().queue_declare(q, exclusive=True)
    owner._impl._transport._sock.shutdown(socket.SHUT_RDWR)
    observer = connect(node)
    try:
        deadline = time.monotonic() + 3
        while True:
            ch = observer.channel()
            try:
                ch.queue_declare(q, passive=True)
            except pex.ChannelClosedByBroker as e:
                assert e.reply_code == 404
                break
            assert time.monotonic() < deadline, (
                "exclusive queue survived its owner's lost connection"
            )
            observer.process_data_events(time_limit=0.05)
    finally:
        observer.close()
        try:
            owner.close()
        except Exception:
            pass


def test_auto_delete_queue_deleted_when_last_consumer_cancels(conn, ch):
    q = declare_queue(ch, auto_delete=True)
    t1 = ch.basic_consume(q, lambda *a: None)
    t2 = ch.basic_consume(q, lambda *a: None)
    ch.basic_cancel(t1)
    assert ch.queue_declare(q, passive=True).method.consumer_count == 1  # still there
    ch.basic_cancel(t2)
    with pytest.raises(pex.ChannelClosedByBroker) as ei:
        ch.queue_declare(q, passive=True)
    assert ei.value.reply_code == 404


def test_auto_delete_queue_survives_without_ever_having_consumers(ch):
    q = declare_queue(ch, auto_delete=True)
    ch.basic_publish("", q, b"x")
    assert ch.queue_declare(q, passive=True).method.message_count == 1
    ch.queue_delete(q)


def test_passive_declare_missing_queue_is_404(conn, ch):
    name = uid("missing")
    with pytest.raises(pex.ChannelClosedByBroker) as ei:
        ch.queue_declare(name, passive=True)
    assert ei.value.reply_code == 404
    assert "NOT_FOUND" in ei.value.reply_text and name in ei.value.reply_text
    assert conn.is_open
    assert conn.channel().is_open


def test_passive_declare_missing_exchange_is_404(conn, ch):
    with pytest.raises(pex.ChannelClosedByBroker) as ei:
        ch.exchange_declare(uid("missing"), passive=True)
    assert ei.value.reply_code == 404


@pytest.mark.parametrize(
    "change",
    [
        {"durable": True},
        {"auto_delete": True},
        {"arguments": {"x-max-length": 10}},
    ],
)
def test_inequivalent_queue_redeclare_is_406(conn, change):
    ch = conn.channel()
    q = uid("q")
    ch.queue_declare(q, durable=False, auto_delete=False)
    with pytest.raises(pex.ChannelClosedByBroker) as ei:
        ch.queue_declare(q, **{"durable": False, "auto_delete": False, **change})
    assert ei.value.reply_code == 406
    assert "PRECONDITION_FAILED" in ei.value.reply_text
    ch = conn.channel()
    ch.queue_declare(q, durable=False, auto_delete=False)  # equivalent redeclare is fine
    ch.queue_delete(q)


def test_inequivalent_exchange_redeclare_is_406(conn):
    ch = conn.channel()
    ex = uid("ex")
    ch.exchange_declare(ex, "direct")
    ch.exchange_declare(ex, "direct")
    with pytest.raises(pex.ChannelClosedByBroker) as ei:
        ch.exchange_declare(ex, "fanout")
    assert ei.value.reply_code == 406
    conn.channel().exchange_delete(ex)


@pytest.mark.parametrize("kind", ["queue", "exchange"])
def test_amq_prefix_declare_is_403(conn, kind):
    ch = conn.channel()
    with pytest.raises(pex.ChannelClosedByBroker) as ei:
        if kind == "queue":
            ch.queue_declare("amq." + uid("q"))
        else:
            ch.exchange_declare("amq." + uid("ex"), "direct")
    assert ei.value.reply_code == 403
    assert "ACCESS_REFUSED" in ei.value.reply_text


def test_amq_exchanges_exist(ch):
    for name in ("amq.direct", "amq.fanout", "amq.topic", "amq.headers", "amq.match"):
        ch.exchange_declare(name, passive=True)


def test_queue_delete_if_unused_is_406(conn, ch):
    q = declare_queue(ch)
    ch.basic_consume(q, lambda *a: None)
    ch2 = conn.channel()
    with pytest.raises(pex.ChannelClosedByBroker) as ei:
        ch2.queue_delete(q, if_unused=True)
    assert ei.value.reply_code == 406
    assert ch.queue_declare(q, passive=True).method.consumer_count == 1
    ch.queue_delete(q)


def test_queue_delete_if_empty_is_406(conn, ch):
    q = declare_queue(ch)
    ch.basic_publish("", q, b"x")
    ch2 = conn.channel()
    with pytest.raises(pex.ChannelClosedByBroker) as ei:
        ch2.queue_delete(q, if_empty=True)
    assert ei.value.reply_code == 406
    assert ch.queue_declare(q, passive=True).method.message_count == 1
    r = ch.queue_delete(q, if_empty=False)
    assert r.method.message_count == 1


def test_queue_purge(ch):
    q = declare_queue(ch, exclusive=True)
    for _ in range(4):
        ch.basic_publish("", q, b"x")
    assert ch.queue_purge(q).method.message_count == 4
    assert ch.basic_get(q) == (None, None, None)


def test_queue_unbind(ch):
    ex = uid("direct")
    ch.exchange_declare(ex, "direct")
    q = declare_queue(ch, exclusive=True)
    ch.queue_bind(q, ex, "k")
    ch.queue_unbind(q, ex, "k")
    ch.confirm_delivery()
    ch.basic_publish(ex, "k", b"x")
    assert ch.basic_get(q) == (None, None, None)
    ch.exchange_delete(ex)


def test_auto_delete_exchange_deleted_with_last_binding(conn, ch):
    ex = uid("direct")
    ch.exchange_declare(ex, "direct", auto_delete=True)
    q = declare_queue(ch, exclusive=True)
    ch.queue_bind(q, ex, "k1")
    ch.queue_bind(q, ex, "k2")
    ch.queue_unbind(q, ex, "k1")
    ch.exchange_declare(ex, passive=True)
    ch.queue_unbind(q, ex, "k2")
    with pytest.raises(pex.ChannelClosedByBroker) as ei:
        ch.exchange_declare(ex, passive=True)
    assert ei.value.reply_code == 404


# -- consumers: cancel notification, release on close/loss ------------------------------------


def test_consumer_cancel_notification_on_queue_delete(conn, ch):
    q = declare_queue(ch)
    cancelled = []
    ch.add_on_cancel_callback(lambda frame: cancelled.append(frame.method.consumer_tag))
    tag = ch.basic_consume(q, lambda *a: None)
    other = conn.channel()
    other.queue_delete(q)
    assert drain(conn, lambda: cancelled)
    assert cancelled == [tag]
    assert tag not in ch.consumer_tags
    assert ch.is_open


def test_unacked_released_on_channel_close_redelivered_to_other_consumer(conn):
    setup = conn.channel()
    q = declare_queue(setup, exclusive=True)
    for b in (b"m1", b"m2"):
        setup.basic_publish("", q, b)
    first = conn.channel()
    got1 = []
    first.basic_consume(q, lambda c, m, p, b: got1.append(b))
    assert drain(conn, lambda: len(got1) == 2)
    first.close()
    second = conn.channel()
    got2 = []
    second.basic_consume(q, lambda c, m, p, b: got2.append((b, m.redelivered)))
    assert drain(conn, lambda: len(got2) == 2)
    assert got2 == [(b"m1", True), (b"m2", True)]


def test_unacked_released_on_connection_loss(node, conn):
    ch = conn.channel()
    q = declare_queue(ch)
    ch.confirm_delivery()
    for b in (b"m1", b"m2", b"m3"):
        ch.basic_publish("", q, b)
    victim = connect(node)
    vch = victim.channel()
    got = []
    vch.basic_consume(q, lambda c, m, p, b: got.append(b))
    assert drain(victim, lambda: len(got) == 3)
    # Abrupt loss: no connection.close, the TCP stream just ends.
    victim._impl._transport._sock.shutdown(socket.SHUT_RDWR)
    redelivered = []
    ch.basic_consume(
        q, lambda c, m, p, b: (redelivered.append((b, m.redelivered)), c.basic_ack(m.delivery_tag))
    )
    assert drain(conn, lambda: len(redelivered) == 3)
    assert redelivered == [(b"m1", True), (b"m2", True), (b"m3", True)]
    try:
        victim.close()
    except Exception:
        pass
    ch.queue_delete(q)


def test_cancelled_consumer_unacked_still_ackable(conn, ch):
    q = declare_queue(ch, exclusive=True)
    ch.basic_publish("", q, b"m")
    got = []
    tag = ch.basic_consume(q, lambda c, m, p, b: got.append(m.delivery_tag))
    assert drain(conn, lambda: got)
    ch.basic_cancel(tag)
    ch.basic_ack(got[0])
    ch.close()
    ch2 = conn.channel()
    assert ch2.queue_declare(q, passive=True).method.message_count == 0


def test_exclusive_consumer(conn, ch):
    q = declare_queue(ch, exclusive=True)
    ch.basic_consume(q, lambda *a: None, exclusive=True)
    ch2 = conn.channel()
    with pytest.raises(pex.ChannelClosedByBroker) as ei:
        ch2.basic_consume(q, lambda *a: None)
    assert ei.value.reply_code == 403


def test_round_robin_between_consumers(conn):
    setup = conn.channel()
    q = declare_queue(setup, exclusive=True)
    a, b = conn.channel(), conn.channel()
    got_a, got_b = [], []
    a.basic_consume(q, lambda c, m, p, body: got_a.append(body), auto_ack=True)
    b.basic_consume(q, lambda c, m, p, body: got_b.append(body), auto_ack=True)
    for i in range(10):
        setup.basic_publish("", q, f"{i}".encode())
    assert drain(conn, lambda: len(got_a) + len(got_b) == 10)
    assert len(got_a) == 5 and len(got_b) == 5


# -- basic.recover ----------------------------------------------------------------------------


def test_basic_recover_requeue_true(conn, ch):
    q = declare_queue(ch, exclusive=True)
    ch.basic_publish("", q, b"m1")
    ch.basic_publish("", q, b"m2")
    got = []
    ch.basic_consume(q, lambda c, m, p, b: got.append((b, m.redelivered, m.delivery_tag)))
    assert drain(conn, lambda: len(got) == 2)
    ch.basic_recover(requeue=True)
    assert drain(conn, lambda: len(got) == 4)
    assert [(b, r) for b, r, _ in got] == [
        (b"m1", False),
        (b"m2", False),
        (b"m1", True),
        (b"m2", True),
    ]
    # The old delivery tags are void; the new ones settle.
    ch.basic_ack(got[3][2], multiple=True)
    settle_in(conn)
    assert count(ch, q) == 0


# -- transactions -----------------------------------------------------------------------------


def test_tx_commit_and_rollback_publishes(conn):
    ch = conn.channel()
    q = declare_queue(ch, exclusive=True)
    observer = conn.channel()
    ch.tx_select()
    ch.basic_publish("", q, b"t1")
    ch.basic_publish("", q, b"t2")
    assert count(observer, q) == 0
    ch.tx_commit()
    assert count(observer, q) == 2
    ch.basic_publish("", q, b"t3")
    ch.tx_rollback()
    assert count(observer, q) == 2
    ch.basic_publish("", q, b"t4")
    ch.tx_commit()
    assert [get_body(observer, q) for _ in range(4)] == [b"t1", b"t2", b"t4", None]


def test_tx_acks_applied_on_commit_only(conn):
    ch = conn.channel()
    q = declare_queue(ch, exclusive=True)
    ch.basic_publish("", q, b"m")
    ch.tx_select()
    method, _, _ = ch.basic_get(q, auto_ack=False)
    ch.basic_ack(method.delivery_tag)
    ch.tx_rollback()
    ch.tx_commit()  # nothing pending: the rolled-back ack never happened
    ch.close()
    ch2 = conn.channel()
    method, _, body = ch2.basic_get(q, auto_ack=False)
    assert body == b"m" and method.redelivered is True
    ch2.tx_select()
    ch2.basic_ack(method.delivery_tag)
    ch2.tx_commit()
    ch2.close()
    assert conn.channel().basic_get(q) == (None, None, None)


def test_tx_commit_without_select_is_406(conn):
    ch = conn.channel()
    with pytest.raises(pex.ChannelClosedByBroker) as ei:
        ch.tx_commit()
    assert ei.value.reply_code == 406


# -- connection-level -------------------------------------------------------------------------


def test_wrong_password_is_access_refused(node):
    params = pika.URLParameters(f"amqp://guest:wrong@127.0.0.1:{node.port}/")
    with pytest.raises(pex.ProbableAuthenticationError) as ei:
        pika.BlockingConnection(params)
    assert "403" in str(ei.value) and "ACCESS_REFUSED" in str(ei.value)


def test_unknown_user_is_access_refused(node):
    params = pika.URLParameters(f"amqp://nobody-{uuid.uuid4().hex[:6]}:x@127.0.0.1:{node.port}/")
    with pytest.raises(pex.ProbableAuthenticationError) as ei:
        pika.BlockingConnection(params)
    assert "403" in str(ei.value)


def test_unknown_vhost_is_530(node):
    params = pika.URLParameters(f"amqp://guest:guest@127.0.0.1:{node.port}/{uid('vh')}")
    with pytest.raises(pex.ProbableAccessDeniedError) as ei:
        pika.BlockingConnection(params)
    assert "530" in str(ei.value) and "NOT_ALLOWED" in str(ei.value)


def test_server_properties_and_capabilities(conn):
    props = conn._impl.server_properties
    caps = props["capabilities"]
    for cap in (
        "publisher_confirms",
        "exchange_exchange_bindings",
        "basic.nack",
        "consumer_cancel_notify",
        "authentication_failure_close",
        "per_consumer_qos",
    ):
        assert caps.get(cap) is True, cap
    assert conn.publisher_confirms_supported
    assert conn.consumer_cancel_notify_supported
    assert conn.exchange_exchange_bindings_supported


def test_many_channels_and_close_one(conn):
    chans = [conn.channel() for _ in range(20)]
    q = declare_queue(chans[0], exclusive=True)
    for i, c in enumerate(chans):
        c.basic_publish("", q, f"{i}".encode())
    chans[5].close()
    assert count(chans[6], q) == 20


def test_clean_close_with_consumers(node):
    c = connect(node)
    ch = c.channel()
    q = declare_queue(ch, exclusive=True)
    ch.basic_consume(q, lambda *a: None)
    c.close()
    assert c.is_closed


def _frame(ftype: int, channel: int, payload: bytes) -> bytes:
    return struct.pack(">BHI", ftype, channel, len(payload)) + payload + b"\xce"


def _shortstr(s: str) -> bytes:
    b = s.encode()
    return bytes([len(b)]) + b


def _longstr(b: bytes) -> bytes:
    return struct.pack(">I", len(b)) + b


def _read_frame(sock: socket.socket, buf: bytearray) -> tuple[int, int, bytes] | None:
    while len(buf) < 7 or len(buf) < 8 + struct.unpack(">I", bytes(buf[3:7]))[0]:
        data = sock.recv(65536)
        if not data:
            return None
        buf.extend(data)
    ftype, channel, size = struct.unpack(">BHI", bytes(buf[:7]))
    payload = bytes(buf[7 : 7 + size])
    assert buf[7 + size] == 0xCE
    del buf[: 8 + size]
    return ftype, channel, payload


def raw_handshake(port: int, heartbeat: int) -> tuple[socket.socket, bytearray, int]:
    """A minimal hand-written client: connect, negotiate `heartbeat`, open vhost '/'."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    buf = bytearray()
    sock.sendall(b"AMQP\x00\x00\x09\x01")
    ftype, _, payload = _read_frame(sock, buf)
    assert ftype == 1 and payload[:4] == b"\x00\x0a\x00\x0a"  # connection.start
    start_ok = (
        b"\x00\x0a\x00\x0b"
        + struct.pack(">I", 0)
        + _shortstr("PLAIN")
        + _longstr(b"\x00guest\x00guest")
        + _shortstr("en_US")
    )
    sock.sendall(_frame(1, 0, start_ok))
    ftype, _, payload = _read_frame(sock, buf)
    assert payload[:4] == b"\x00\x0a\x00\x1e"  # connection.tune
    channel_max, frame_max, server_hb = struct.unpack(">HIH", payload[4:12])
    tune_ok = b"\x00\x0a\x00\x1f" + struct.pack(">HIH", channel_max, frame_max, heartbeat)
    sock.sendall(_frame(1, 0, tune_ok))
    open_ = b"\x00\x0a\x00\x28" + _shortstr("/") + _shortstr("") + b"\x00"
    sock.sendall(_frame(1, 0, open_))
    ftype, _, payload = _read_frame(sock, buf)
    assert payload[:4] == b"\x00\x0a\x00\x29"  # connection.open-ok
    return sock, buf, server_hb


def test_heartbeat_timeout_drops_silent_client(make_node):
    n = make_node("--heartbeat", "2")
    sock, buf, server_hb = raw_handshake(n.port, heartbeat=2)
    assert server_hb == 2
    t0 = time.monotonic()
    heartbeats = 0
    close_frame = None
    try:
        while True:
            fr = _read_frame(sock, buf)
            if fr is None:
                break
            if fr[0] == 8:
                heartbeats += 1
            elif fr[0] == 1 and fr[2][:4] == b"\x00\x0a\x00\x32":
                close_frame = fr
    except (TimeoutError, ConnectionResetError):
        pass
    elapsed = time.monotonic() - t0
    sock.close()
    assert heartbeats >= 1, "the node sent no heartbeats to an idle client"
    # RabbitMQ drops a peer after two missed heartbeat intervals (2 x 2 s), not at the first.
    assert 3.0 <= elapsed <= 7.0, elapsed
    assert close_frame is None or b"heartbeat" in close_frame[2].lower()
    assert n.alive()


def test_heartbeat_keeps_talking_client_alive(make_node):
    n = make_node("--heartbeat", "2")
    params = pika.URLParameters(n.url)
    params.heartbeat = 2
    c = pika.BlockingConnection(params)
    try:
        assert c._impl.params.heartbeat == 2
        c.process_data_events(time_limit=4.5)  # pika answers heartbeats meanwhile
        ch = c.channel()
        q = declare_queue(ch, exclusive=True)
        ch.basic_publish("", q, b"alive")
        assert get_body(ch, q) == b"alive"
    finally:
        c.close()


# -- more of what clients rely on -------------------------------------------------------------


def test_message_properties_and_header_types_roundtrip(ch):
    import datetime
    import decimal

    q = declare_queue(ch, exclusive=True)
    headers = {
        "str": "text",
        "int": 7,
        "neg": -3,
        "big": 2**40,
        "bool": True,
        "false": False,
        "decimal": decimal.Decimal("3.14"),
        "none": None,
        "bytes": b"\x00\x01raw",
        "list": [1, "two", [3]],
        "table": {"nested": {"deep": "yes"}, "n": 1},
        "ts": datetime.datetime(2024, 5, 6, 7, 8, 9, tzinfo=datetime.UTC),
    }
    props = pika.BasicProperties(
        content_type="application/json",
        content_encoding="gzip",
        headers=headers,
        delivery_mode=2,
        priority=9,
        correlation_id="corr",
        reply_to="reply-q",
        expiration="60000",
        message_id="mid",
        timestamp=1700000000,
        type="kind",
        user_id="guest",
        app_id="tests",
        cluster_id="cid",
    )
    ch.confirm_delivery()
    ch.basic_publish("", q, b"{}", props)
    _, p, body = ch.basic_get(q, auto_ack=True)
    assert body == b"{}"
    for field in (
        "content_type",
        "content_encoding",
        "delivery_mode",
        "priority",
        "correlation_id",
        "reply_to",
        "expiration",
        "message_id",
        "timestamp",
        "type",
        "user_id",
        "app_id",
        "cluster_id",
    ):
        assert getattr(p, field) == getattr(props, field), field
    assert p.headers == headers


def test_empty_body(ch):
    q = declare_queue(ch, exclusive=True)
    ch.confirm_delivery()
    ch.basic_publish("", q, b"")
    ch.basic_publish("", q, b"", pika.BasicProperties(headers={"k": "v"}))
    _, p1, b1 = ch.basic_get(q, auto_ack=True)
    _, p2, b2 = ch.basic_get(q, auto_ack=True)
    assert (b1, b2) == (b"", b"")
    assert p2.headers == {"k": "v"}


def test_user_id_mismatch_is_406(conn, ch):
    q = declare_queue(ch, exclusive=True)
    ch.confirm_delivery()
    with pytest.raises(pex.ChannelClosedByBroker) as ei:
        ch.basic_publish("", q, b"x", pika.BasicProperties(user_id="somebody-else"))
    assert ei.value.reply_code == 406


def test_delivery_tags_and_confirm_tags_are_per_channel(conn):
    a, b = conn.channel(), conn.channel()
    q = declare_queue(a, exclusive=True)
    for _i in range(4):
        a.basic_publish("", q, b"x")
    tags_a = [a.basic_get(q)[0].delivery_tag for _ in range(2)]
    tags_b = [b.basic_get(q)[0].delivery_tag for _ in range(2)]
    assert tags_a == [1, 2] and tags_b == [1, 2]


def test_many_messages_in_order_with_confirms(conn, ch):
    q = declare_queue(ch, exclusive=True)
    ch.confirm_delivery()
    n = 2000
    for i in range(n):
        ch.basic_publish("", q, str(i).encode())
    got = []
    ch.basic_qos(prefetch_count=100)
    ch.basic_consume(q, lambda c, m, p, b: (got.append(int(b)), c.basic_ack(m.delivery_tag)))
    assert drain(conn, lambda: len(got) == n, timeout=10)
    assert got == list(range(n))


def test_nack_requeue_goes_to_another_consumer(conn):
    setup = conn.channel()
    q = declare_queue(setup, exclusive=True)
    a, b = conn.channel(), conn.channel()
    a.basic_qos(prefetch_count=1)
    b.basic_qos(prefetch_count=1)
    got = []

    def on_a(c, m, p, body):
        got.append(("a", body, m.redelivered))
        c.basic_nack(m.delivery_tag, requeue=True) if not m.redelivered else c.basic_ack(
            m.delivery_tag
        )

    def on_b(c, m, p, body):
        got.append(("b", body, m.redelivered))

    a.basic_consume(q, on_a)
    setup.basic_publish("", q, b"only")
    assert drain(conn, lambda: got)
    # a nacked it back; it is redelivered (to a, the only consumer so far) with the flag set.
    assert drain(conn, lambda: len(got) >= 2)
    assert got[:2] == [("a", b"only", False), ("a", b"only", True)]
    b.basic_consume(q, on_b)
    setup.basic_publish("", q, b"next")
    assert drain(conn, lambda: len(got) >= 3)
    assert got[2][1:] == (b"next", False)


def test_auto_delete_queue_deleted_when_consumer_channel_closes(conn):
    ch = conn.channel()
    q = declare_queue(ch, auto_delete=True)
    ch.basic_consume(q, lambda *a: None)
    ch.close()
    probe = conn.channel()
    with pytest.raises(pex.ChannelClosedByBroker) as ei:
        probe.queue_declare(q, passive=True)
    assert ei.value.reply_code == 404


def test_auto_delete_queue_deleted_when_consumer_connection_lost(node, conn):
    victim = connect(node)
    vch = victim.channel()
    q = declare_queue(vch, auto_delete=True)
    vch.basic_consume(q, lambda *a: None)
    victim._impl._transport._sock.shutdown(socket.SHUT_RDWR)
    deadline = time.monotonic() + 3
    while True:
        probe = conn.channel()
        try:
            probe.queue_declare(q, passive=True)
        except pex.ChannelClosedByBroker as e:
            assert e.reply_code == 404
            break
        assert time.monotonic() < deadline, (
            "auto-delete queue survived its consumer's lost connection"
        )
        conn.process_data_events(time_limit=0.05)
    try:
        victim.close()
    except Exception:
        pass


_CONSUMER_SCRIPT = r"""
import sys, pika
conn = pika.BlockingConnection(pika.URLParameters(sys.argv[1]))
ch = conn.channel()
ch.basic_qos(prefetch_count=10)
n = 0
def on_msg(c, m, p, b):
    global n
    n += 1
    if n == int(sys.argv[3]):
        print("got", n, flush=True)
ch.basic_consume(sys.argv[2], on_msg)
ch.start_consuming()
"""


def test_unacked_released_when_consumer_process_killed(node, conn, tmp_path):
    import subprocess
    import sys

    ch = conn.channel()
    q = declare_queue(ch)
    ch.confirm_delivery()
    for i in range(3):
        ch.basic_publish("", q, f"m{i}".encode())
    script = tmp_path / "consumer.py"
    script.write_text(_CONSUMER_SCRIPT)
    proc = subprocess.Popen(
        [sys.executable, str(script), node.url, q, "3"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "got 3"
        assert ch.queue_declare(q, passive=True).method.message_count == 0
        proc.kill()
        proc.wait(5)
        got = []
        ch.basic_consume(
            q, lambda c, m, p, b: (got.append((b, m.redelivered)), c.basic_ack(m.delivery_tag))
        )
        assert drain(conn, lambda: len(got) == 3)
        assert got == [(b"m0", True), (b"m1", True), (b"m2", True)]
    finally:
        if proc.poll() is None:
            proc.kill()
        ch.queue_delete(q)


def test_confirm_and_tx_are_exclusive(conn):
    ch = conn.channel()
    ch.tx_select()
    with pytest.raises(pex.ChannelClosedByBroker) as ei:
        ch.confirm_delivery()
    assert ei.value.reply_code == 406
    ch = conn.channel()
    ch.confirm_delivery()
    with pytest.raises(pex.ChannelClosedByBroker) as ei:
        ch.tx_select()
    assert ei.value.reply_code == 406


def test_exchange_delete_if_unused_is_406(conn, ch):
    ex = uid("ex")
    ch.exchange_declare(ex, "fanout")
    q = declare_queue(ch, exclusive=True)
    ch.queue_bind(q, ex)
    with pytest.raises(pex.ChannelClosedByBroker) as ei:
        conn.channel().exchange_delete(ex, if_unused=True)
    assert ei.value.reply_code == 406
    ch.exchange_delete(ex)
    with pytest.raises(pex.ChannelClosedByBroker) as ei:
        conn.channel().exchange_declare(ex, passive=True)
    assert ei.value.reply_code == 404


def test_unknown_exchange_type_is_503_connection_error(node):
    c = connect(node)
    ch = c.channel()
    with pytest.raises(pex.ConnectionClosedByBroker) as ei:
        ch.exchange_declare(uid("ex"), "no-such-type")
    assert ei.value.reply_code == 503
    assert c.is_closed


def test_publish_to_internal_exchange_is_403(conn, ch):
    ex = uid("internal")
    ch.exchange_declare(ex, "fanout", internal=True)
    pub = conn.channel()
    pub.confirm_delivery()
    with pytest.raises(pex.ChannelClosedByBroker) as ei:
        pub.basic_publish(ex, "", b"x")
    assert ei.value.reply_code == 403
    ch.exchange_delete(ex)


def test_consume_missing_queue_is_404(conn, ch):
    with pytest.raises(pex.ChannelClosedByBroker) as ei:
        ch.basic_consume(uid("missing"), lambda *a: None)
    assert ei.value.reply_code == 404


def test_owner_may_redeclare_exclusive_queue(conn, ch):
    q = declare_queue(ch, exclusive=True)
    assert conn.channel().queue_declare(q, exclusive=True).method.queue == q
    assert conn.channel().queue_declare(q, passive=True).method.queue == q


def test_headers_exchange_void_value_matches_presence(ch):
    ex = uid("headers")
    ch.exchange_declare(ex, "headers", auto_delete=True)
    q = declare_queue(ch, exclusive=True)
    ch.queue_bind(q, ex, arguments={"x-match": "all", "present": None})
    ch.confirm_delivery()
    ch.basic_publish(ex, "", b"has", pika.BasicProperties(headers={"present": "anything"}))
    ch.basic_publish(ex, "", b"hasnt", pika.BasicProperties(headers={"other": 1}))
    assert get_body(ch, q) == b"has"
    assert get_body(ch, q) is None


def test_ack_after_cancel_notification_is_harmless(conn, ch):
    q = declare_queue(ch)
    ch.basic_publish("", q, b"m")
    got, cancelled = [], []
    ch.add_on_cancel_callback(lambda frame: cancelled.append(frame.method.consumer_tag))
    ch.basic_consume(q, lambda c, m, p, b: got.append(m.delivery_tag))
    assert drain(conn, lambda: got)
    conn.channel().queue_delete(q)
    assert drain(conn, lambda: cancelled)
    ch.basic_ack(got[0])  # the delivery tag is still valid on the channel
    assert ch.queue_declare("", exclusive=True).method.queue.startswith("amq.gen-")
    assert ch.is_open


def test_interleaved_requeues_restore_original_order(ch):
    q = declare_queue(ch, exclusive=True)
    for i in range(1, 5):
        ch.basic_publish("", q, f"m{i}".encode())
    t1 = ch.basic_get(q, auto_ack=False)[0].delivery_tag
    t2 = ch.basic_get(q, auto_ack=False)[0].delivery_tag
    t3 = ch.basic_get(q, auto_ack=False)[0].delivery_tag
    ch.basic_reject(t3, requeue=True)
    ch.basic_ack(t2)
    ch.basic_reject(t1, requeue=True)
    got = []
    for _ in range(3):
        method, _, body = ch.basic_get(q, auto_ack=True)
        got.append((body, method.redelivered))
    assert got == [(b"m1", True), (b"m3", True), (b"m4", False)]


def test_tx_mandatory_unroutable_returned_at_commit(conn):
    ch = conn.channel()
    returned = []
    ch.add_on_return_callback(lambda c, m, p, b: returned.append((m.reply_code, b)))
    ch.tx_select()
    ex = uid("fan")
    ch.exchange_declare(ex, "fanout")
    ch.basic_publish(ex, "", b"bounce", mandatory=True)
    ch.tx_rollback()
    ch.basic_publish(ex, "", b"bounce-2", mandatory=True)
    ch.tx_commit()
    assert drain(conn, lambda: returned)
    conn.process_data_events(time_limit=0)
    assert returned == [(312, b"bounce-2")]
    ch.exchange_delete(ex)


def test_consumer_priority_higher_priority_consumer_served_first(conn):
    """`consumer_priorities` is advertised: a consumer with x-priority 10 gets every message while it has room."""
    setup = conn.channel()
    q = declare_queue(setup, exclusive=True)
    low, high = conn.channel(), conn.channel()
    got = []
    low.basic_consume(
        q, lambda c, m, p, b: got.append("low"), auto_ack=True, arguments={"x-priority": 0}
    )
    high.basic_consume(
        q, lambda c, m, p, b: got.append("high"), auto_ack=True, arguments={"x-priority": 10}
    )
    for _ in range(10):
        setup.basic_publish("", q, b"x")
    assert drain(conn, lambda: len(got) == 10)
    assert got == ["high"] * 10


def test_consumer_priority_falls_back_when_high_is_full(conn):
    setup = conn.channel()
    q = declare_queue(setup, exclusive=True)
    low, high = conn.channel(), conn.channel()
    high.basic_qos(prefetch_count=2)
    got = []
    low.basic_consume(q, lambda c, m, p, b: got.append(("low", b)), auto_ack=True)
    high.basic_consume(q, lambda c, m, p, b: got.append(("high", b)), arguments={"x-priority": 5})
    for i in range(5):
        setup.basic_publish("", q, str(i).encode())
    assert drain(conn, lambda: len(got) == 5)
    # pika dispatches per channel, so compare who got which message, not callback order.
    assert sorted(b for who, b in got if who == "high") == [b"0", b"1"]
    assert sorted(b for who, b in got if who == "low") == [b"2", b"3", b"4"]


def test_user_without_vhost_permission_is_530(make_node):
    n = make_node(
        config="""
vhosts = ["/", "orders"]
[[users]]
name = "app"
password = "s3cret"
tags = []
vhosts = ["orders"]
"""
    )
    ok = pika.BlockingConnection(pika.URLParameters(f"amqp://app:s3cret@127.0.0.1:{n.port}/orders"))
    ok.close()
    with pytest.raises(pex.ProbableAccessDeniedError) as ei:
        pika.BlockingConnection(pika.URLParameters(f"amqp://app:s3cret@127.0.0.1:{n.port}/%2F"))
    assert "530" in str(ei.value)
    with pytest.raises(pex.ProbableAuthenticationError) as ei:
        pika.BlockingConnection(pika.URLParameters(f"amqp://app:wrong@127.0.0.1:{n.port}/orders"))
    assert "403" in str(ei.value)


def test_direct_reply_to_rpc(node):
    """pika's RPC with direct reply-to (amq.rabbitmq.reply-to), as the RabbitMQ tutorials."""
    conn = pika.BlockingConnection(pika.URLParameters(node.url))
    ch = conn.channel()
    q = f"rpc-{uuid.uuid4().hex[:8]}"
    ch.queue_declare(q, auto_delete=True)
    replies = []
    ch.basic_consume(
        "amq.rabbitmq.reply-to",
        lambda c, m, p, b: replies.append((p.correlation_id, b)),
        auto_ack=True,
    )
    ch.basic_publish(
        "", q, b"6", pika.BasicProperties(reply_to="amq.rabbitmq.reply-to", correlation_id="c1")
    )
    _, props, body = ch.basic_get(q, auto_ack=True)
    assert props.reply_to.startswith("amq.rabbitmq.reply-to.")
    ch.basic_publish(
        "", props.reply_to, b"%d" % (int(body) * 7), pika.BasicProperties(correlation_id="c1")
    )
    deadline = time.monotonic() + 5
    while not replies and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.05)
    assert replies == [("c1", b"42")]
    conn.close()
