"""AMQP 1.0 with the real python-qpid-proton client: addresses, settlement, outcomes, flow,
large messages, interop with 0-9-1, durability and bad input."""

from __future__ import annotations

import threading
import time
import uuid

import pika
import pytest

proton = pytest.importorskip("proton", reason="python-qpid-proton is not installed")

from proton import (  # noqa: E402
    ConnectionException,  # noqa: E402
    Delivery,
    Message,
)
from proton.handlers import MessagingHandler  # noqa: E402
from proton.reactor import AtMostOnce, Container  # noqa: E402
from proton.utils import LinkDetached, SendException  # noqa: E402

from merpati.node.amqp10 import performatives as P  # noqa: E402
from tests.support.net import non_loopback_address  # noqa: E402

from ._support import RawClient, blocking, channel091, frame, queue_count  # noqa: E402


def _queue(node, name=None, **kw):
    name = name or f"q-{uuid.uuid4().hex[:8]}"
    conn, ch = channel091(node)
    ch.queue_declare(name, **kw)
    conn.close()
    return name


def test_send_and_receive_on_queue_address(node):
    q = _queue(node)
    c = blocking(node)
    s = c.create_sender(f"/queues/{q}")
    for i in range(5):
        s.send(Message(body=f"m{i}"))
    r = c.create_receiver(f"/queues/{q}")
    got = []
    for _ in range(5):
        got.append(r.receive(timeout=5).body)
        r.accept()
    c.close()
    assert got == [f"m{i}" for i in range(5)]
    assert queue_count(node, q) == 0


def test_pre_settled_both_ways(node):
    q = _queue(node)
    c = blocking(node)
    s = c.create_sender(f"/queues/{q}", options=AtMostOnce())
    for i in range(3):
        s.send(Message(body=i))
    r = c.create_receiver(f"/queues/{q}", options=AtMostOnce())
    got = [r.receive(timeout=5).body for _ in range(3)]
    c.close()
    assert got == [0, 1, 2]
    assert queue_count(node, q) == 0


def test_exchange_targets_and_anonymous_relay(node):
    q = _queue(node)
    conn, ch = channel091(node)
    ch.queue_bind(q, "amq.direct", routing_key="k1")
    ch.queue_bind(q, "amq.topic", routing_key="a.*")
    conn.close()
    c = blocking(node)
    c.create_sender("/exchanges/amq.direct/k1").send(Message(body="direct"))
    c.create_sender("/exchanges/amq.topic").send(Message(body="topic", subject="a.b"))
    c.create_sender(None).send(Message(body="relay", address=f"/queues/{q}"))
    # Unroutable: released, which the blocking sender reports as a failed send.
    with pytest.raises(SendException):
        c.create_sender("/exchanges/amq.direct/nowhere").send(Message(body="lost"))
    r = c.create_receiver(f"/queues/{q}")
    got = []
    for _ in range(3):
        got.append(r.receive(timeout=5).body)
        r.accept()
    c.close()
    assert sorted(got) == ["direct", "relay", "topic"]


def test_missing_nodes_detach_with_not_found(node):
    c = blocking(node)
    with pytest.raises(LinkDetached) as e:
        c.create_sender("/queues/no-such-queue")
    assert "amqp:not-found" in str(e.value)
    with pytest.raises(LinkDetached) as e:
        c.create_receiver("/queues/no-such-queue")
    assert "amqp:not-found" in str(e.value)
    with pytest.raises(LinkDetached) as e:
        c.create_sender("/exchanges/no-such-exchange/k")
    assert "amqp:not-found" in str(e.value)
    # The connection is still usable.
    q = _queue(node)
    c.create_sender(f"/queues/{q}").send(Message(body="still fine"))
    c.close()


def test_four_outcomes_on_queue_state(node):
    dlq = _queue(node)
    args = {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dlq}
    c = blocking(node)

    def one(body):
        q = _queue(node, arguments=args)
        c.create_sender(f"/queues/{q}").send(Message(body=body))
        r = c.create_receiver(f"/queues/{q}", credit=1)
        m = r.receive(timeout=5)
        assert m.body == body and m.delivery_count == 0
        return q, r

    q, r = one("accept-me")
    r.accept()  # accepted: gone
    r.close()
    assert queue_count(node, q) == 0

    q, r = one("reject-me")
    r.reject()  # rejected: dead-lettered (dropped without a DLX)
    r.close()
    assert queue_count(node, q) == 0
    assert queue_count(node, dlq) == 1

    q, r = one("release-me")
    r.release(delivered=False)  # released: requeued, delivery count not charged
    m = r.receive(timeout=5)
    assert m.body == "release-me" and m.delivery_count == 0
    r.accept()
    r.close()
    assert queue_count(node, q) == 0

    q, r = one("modify-me")
    d = r.fetcher.unsettled[0]
    d.local.failed = True
    d.local.annotations = {proton.symbol("x-opt-note"): "tried"}
    r.settle(Delivery.MODIFIED)  # modified, delivery-failed: count charged, annotations merged
    m = r.receive(timeout=5)
    assert m.body == "modify-me" and m.delivery_count == 1
    assert m.annotations.get("x-opt-note") == "tried"
    r.release(delivered=False)
    r.close()
    assert queue_count(node, q) == 1
    c.close()


def test_modified_undeliverable_here_goes_to_another_link(node):
    q = _queue(node)
    c = blocking(node)
    c.create_sender(f"/queues/{q}").send(Message(body="picky"))
    r1 = c.create_receiver(f"/queues/{q}", credit=1)
    assert r1.receive(timeout=5).body == "picky"
    r2 = c.create_receiver(f"/queues/{q}", credit=1, name="second")
    d = r1.fetcher.unsettled[0]
    d.local.undeliverable = True
    r1.settle(Delivery.MODIFIED)
    m = r2.receive(timeout=5)
    assert m.body == "picky"
    r2.accept()
    c.close()


class _Drainer(MessagingHandler):
    def __init__(self, url_, address, n):
        super().__init__(prefetch=0, auto_accept=True)
        self.url, self.address, self.n = url_, address, n
        self.got = []
        self.drained = None

    def on_start(self, event):
        conn = event.container.connect(self.url, allowed_mechs="PLAIN")
        self.receiver = event.container.create_receiver(conn, self.address)
        self.receiver.drain(self.n)

    def on_message(self, event):
        self.got.append(event.message.body)

    def on_link_flow(self, event):
        if self.receiver.credit == 0 and not self.receiver.draining() and self.drained is None:
            self.drained = self.receiver.credit
            event.connection.close()


def test_credit_and_drain(node):
    q = _queue(node)
    c = blocking(node)
    s = c.create_sender(f"/queues/{q}")
    for i in range(3):
        s.send(Message(body=i))
    c.close()
    h = _Drainer(f"amqp://guest:guest@127.0.0.1:{node.port}", f"/queues/{q}", 10)
    t = threading.Thread(target=Container(h).run, daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive()
    assert h.got == [0, 1, 2]
    assert h.drained == 0


def test_large_multi_frame_messages(node):
    q = _queue(node)
    c = blocking(node)
    body = bytes(range(256)) * 4096 * 3  # 3 MiB: many frames of 128 KiB each way
    c.create_sender(f"/queues/{q}").send(Message(body=body))
    r = c.create_receiver(f"/queues/{q}")
    m = r.receive(timeout=10)
    r.accept()
    c.close()
    assert m.body == body


def test_properties_from_091_to_10(node):
    q = _queue(node)
    conn, ch = channel091(node)
    ch.basic_publish(
        "",
        q,
        b"from 0-9-1",
        pika.BasicProperties(
            content_type="text/plain",
            content_encoding="utf-8",
            correlation_id="corr-1",
            reply_to="replies",
            message_id="urn:uuid:6e8bc430-9c3a-11d9-9669-0800200c9a66",
            priority=5,
            delivery_mode=2,
            expiration="60000",
            headers={"h-str": "v", "h-int": 7, "x-opt-ann": "a"},
        ),
    )
    conn.close()
    c = blocking(node)
    r = c.create_receiver(f"/queues/{q}")
    m = r.receive(timeout=5)
    r.accept()
    c.close()
    assert m.body == b"from 0-9-1"
    assert m.content_type == "text/plain" and m.content_encoding == "utf-8"
    assert m.correlation_id == "corr-1" and m.reply_to == "replies"
    assert m.id == uuid.UUID("6e8bc430-9c3a-11d9-9669-0800200c9a66")
    assert m.priority == 5 and m.durable and m.ttl == 60
    assert m.properties == {"h-str": "v", "h-int": 7}
    assert m.annotations["x-opt-ann"] == "a"


def test_properties_from_10_to_091(node):
    q = _queue(node)
    c = blocking(node)
    c.create_sender(f"/queues/{q}").send(
        Message(
            body=b"from 1.0",
            inferred=True,  # a data section (proton sends bytes as an amqp-value otherwise)
            content_type="application/octet-stream",
            content_encoding="gzip",
            correlation_id="corr-2",
            reply_to="/queues/replies",
            id="msg-2",
            priority=6,
            durable=True,
            ttl=30,
            properties={"k": "v", "n": 3},
        )
    )
    c.close()
    conn, ch = channel091(node)
    method, props, body = ch.basic_get(q, auto_ack=True)
    conn.close()
    assert body == b"from 1.0"
    assert props.content_type == "application/octet-stream" and props.content_encoding == "gzip"
    assert props.correlation_id == "corr-2" and props.reply_to == "/queues/replies"
    assert props.message_id == "msg-2" and props.priority == 6 and props.delivery_mode == 2
    assert props.expiration == "30000"
    assert props.headers == {"k": "v", "n": 3}


def test_amqp_value_body_to_091(node):
    q = _queue(node)
    c = blocking(node)
    c.create_sender(f"/queues/{q}").send(Message(body={"a": 1}))
    c.close()
    conn, ch = channel091(node)
    _m, props, body = ch.basic_get(q, auto_ack=True)
    conn.close()
    assert props.type == "amqp-1.0" and body.startswith(b"\x00\x53\x77")


def test_persistent_message_survives_restart(make_node):
    n = make_node()
    q = _queue(n, durable=True)
    c = blocking(n)
    c.create_sender(f"/queues/{q}").send(Message(body="kept", durable=True, properties={"p": 1}))
    c.close()
    n.stop()
    n.start()
    c = blocking(n)
    r = c.create_receiver(f"/queues/{q}")
    m = r.receive(timeout=5)
    r.accept()
    c.close()
    assert m.body == "kept" and m.durable and m.properties == {"p": 1}


def test_vhost_from_hostname_and_bad_login(make_node):
    n = make_node(
        config='vhosts = ["/", "other"]\n[[users]]\nname = "guest"\npassword = "guest"\nvhosts = ["/", "other"]\n'
    )
    conn = pika.BlockingConnection(
        pika.URLParameters(f"amqp://guest:guest@127.0.0.1:{n.port}/other")
    )
    conn.channel().queue_declare("in-other")
    conn.close()
    c = blocking(n, virtual_host="vhost:other")
    c.create_sender("/queues/in-other").send(Message(body="x"))
    c.close()
    with pytest.raises(ConnectionException):
        blocking(n, virtual_host="vhost:missing")
    from proton.utils import BlockingConnection

    with pytest.raises(ConnectionException):
        BlockingConnection(
            f"amqp://guest:wrong@127.0.0.1:{n.port}", timeout=5, allowed_mechs="PLAIN"
        )


def test_anonymous_from_loopback_by_default_and_not_when_turned_off(make_node, node):
    """As RabbitMQ: a 1.0 client without credentials (rhea's and proton's examples) is the
    default user, guest, which is allowed from loopback only."""
    from proton.utils import BlockingConnection

    q = _queue(node)
    c = BlockingConnection(f"amqp://127.0.0.1:{node.port}", timeout=5, allowed_mechs="ANONYMOUS")
    c.create_sender(f"/queues/{q}").send(Message(body="anon"))
    c.close()
    assert queue_count(node, q) == 1
    n = make_node("--amqp10-anonymous", "false")
    with pytest.raises(ConnectionException):
        BlockingConnection(f"amqp://127.0.0.1:{n.port}", timeout=5, allowed_mechs="ANONYMOUS")
    raw = RawClient(n)
    raw.sock.sendall(b"AMQP\x00\x01\x00\x00")  # no SASL layer: only as the anonymous user
    assert raw.read_exact(8) == b"AMQP\x00\x01\x00\x00"
    close = raw.until(P.Close)
    assert close.error.condition == "amqp:unauthorized-access"
    raw.close()


@pytest.mark.skipif(
    non_loopback_address() is None, reason="this machine has no non-loopback IPv4 address"
)
def test_anonymous_is_guest_and_so_refused_from_another_host(make_node):
    from proton.utils import BlockingConnection

    n = make_node("--bind", "0.0.0.0")
    with pytest.raises(ConnectionException):
        BlockingConnection(
            f"amqp://{non_loopback_address()}:{n.port}", timeout=5, allowed_mechs="ANONYMOUS"
        )


def test_bad_frames_close_with_amqp_errors_and_spare_others(node):
    q = _queue(node)
    watcher = blocking(node)
    wr = watcher.create_receiver(f"/queues/{q}")

    raw = RawClient(node)
    raw.login()
    raw.sock.sendall(b"\x00\x00\x00\x0c\x02\x00\x00\x00\x00\x53\x10\xff")  # junk performative
    close = raw.until(P.Close)
    assert close.error.condition == "amqp:decode-error"
    assert raw.closed()

    raw = RawClient(node)
    raw.login()
    raw.sock.sendall(b"\x00\x10\x00\x00\x02\x00\x00\x00")  # 1 MiB frame header > max-frame-size
    close = raw.until(P.Close)
    assert close.error.condition == "amqp:connection:framing-error"

    raw = RawClient(node)
    raw.login()
    raw.begin()
    raw.sock.sendall(frame(0, P.Transfer(handle=7, delivery_id=0, delivery_tag=b"t"), b"x"))
    end = raw.until(P.End)
    assert end.error.condition == "amqp:session:unattached-handle"
    raw.close()

    # The node and the other connection are unaffected.
    blocking(node).create_sender(f"/queues/{q}").send(Message(body="after"))
    deadline = time.monotonic() + 5
    got = []
    while time.monotonic() < deadline and "after" not in got:
        got.append(wr.receive(timeout=5).body)
        wr.accept()
    assert "after" in got
    watcher.close()


def test_delivery_limit_counts_modified_delivery_failed(node):
    """x-delivery-limit: past it, a message is dead-lettered (reason delivery_limit); the count is
    the one modified(delivery-failed) charges, and released does not charge it."""
    dlq = _queue(node)
    q = _queue(
        node,
        arguments={
            "x-delivery-limit": 2,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": dlq,
        },
    )
    c = blocking(node)
    c.create_sender(f"/queues/{q}").send(Message(body="poison"))
    r = c.create_receiver(f"/queues/{q}", credit=1)
    m = r.receive(timeout=5)
    r.release(delivered=False)  # not charged
    m = r.receive(timeout=5)
    assert m.delivery_count == 0
    for expected in (1, 2):
        d = r.fetcher.unsettled[0]
        d.local.failed = True
        r.settle(Delivery.MODIFIED)
        m = r.receive(timeout=5)
        assert m.delivery_count == expected
    d = r.fetcher.unsettled[0]
    d.local.failed = True
    r.settle(Delivery.MODIFIED)  # third failure: over the limit of 2
    r.close()
    deadline = time.time() + 5
    while queue_count(node, dlq) != 1 and time.time() < deadline:
        time.sleep(0.05)
    assert queue_count(node, dlq) == 1 and queue_count(node, q) == 0
    conn, ch = channel091(node)
    _, props, body = ch.basic_get(dlq, auto_ack=True)
    assert props.headers["x-death"][0]["reason"] == "delivery_limit"
    conn.close()
    c.close()


def test_amqp10_priority_reaches_a_priority_queue(node):
    q = _queue(node, arguments={"x-max-priority": 9})
    c = blocking(node)
    s = c.create_sender(f"/queues/{q}")
    for p in (1, 7, 4):
        s.send(Message(body=f"p{p}", priority=p))
    r = c.create_receiver(f"/queues/{q}")
    got = []
    for _ in range(3):
        got.append(r.receive(timeout=5).body)
        r.accept()
    c.close()
    assert got == ["p7", "p4", "p1"]


def test_delayed_exchange_holds_a_message_sent_over_amqp10(node):
    """A 1.0 publisher's x-delay (an application property, the 0-9-1 header) is honoured."""
    ex, q = f"delayed-{uuid.uuid4().hex[:8]}", f"dq-{uuid.uuid4().hex[:8]}"
    conn, ch = channel091(node)
    ch.exchange_declare(ex, "x-delayed-message", arguments={"x-delayed-type": "direct"})
    ch.queue_declare(q)
    ch.queue_bind(q, ex, "k")
    conn.close()
    c = blocking(node)
    t0 = time.monotonic()
    c.create_sender(f"/exchanges/{ex}/k").send(
        Message(body="later", properties={"x-delay": 500})
    )  # returns once the node accepted it
    assert queue_count(node, q) == 0  # held by the exchange, not routed at once
    r = c.create_receiver(f"/queues/{q}")
    assert r.receive(timeout=5).body == "later"
    r.accept()
    assert time.monotonic() - t0 >= 0.49
    c.close()


def test_proton_plain_and_v1_addresses(node):
    """qpid-proton's examples use a plain name ('examples'); RabbitMQ 3.x users write
    /queue/NAME (declared at attach if missing) and /amq/queue/NAME (must exist)."""
    from proton.utils import BlockingConnection

    plain, v1 = f"examples-{uuid.uuid4().hex[:8]}", f"v1-{uuid.uuid4().hex[:8]}"
    c = BlockingConnection(f"amqp://127.0.0.1:{node.port}", timeout=5, allowed_mechs="ANONYMOUS")
    try:
        for address in (plain, f"/queue/{v1}"):
            s = c.create_sender(address)
            for i in range(3):
                s.send(Message(body=f"{address}-{i}"))
        assert queue_count(node, plain) == 3 and queue_count(node, v1) == 3
        r = c.create_receiver(f"/amq/queue/{v1}")
        assert [r.receive(timeout=5).body for _ in range(3)] == [
            f"/queue/{v1}-{i}" for i in range(3)
        ]
        r.accept()
        r2 = c.create_receiver(plain)
        assert r2.receive(timeout=5).body == f"{plain}-0"
        r2.accept()
        with pytest.raises(LinkDetached) as info:
            c.create_receiver(f"/amq/queue/missing-{uuid.uuid4().hex[:8]}")
        assert "amqp:not-found" in str(info.value)
    finally:
        c.close()


def test_proton_receives_from_v1_exchange_and_topic_sources(node):
    """RabbitMQ 3.x's /exchange/NAME/KEY and /topic/KEY sources: a queue of the link's own,
    bound with the key, gone when the link detaches."""
    from proton.utils import BlockingConnection

    ex = f"ex-{uuid.uuid4().hex[:8]}"
    conn, ch = channel091(node)
    ch.exchange_declare(ex, "direct")
    conn.close()
    from tests.support.http import call

    def generated() -> set[str]:
        queues = call(f"http://127.0.0.1:{node.management_port}", "GET", "/api/queues/%2F")[1]
        return {q["name"] for q in queues if q["name"].startswith("amq.gen-")}

    before = generated()
    c = BlockingConnection(f"amqp://127.0.0.1:{node.port}", timeout=5, allowed_mechs="ANONYMOUS")
    try:
        r1 = c.create_receiver(f"/exchange/{ex}/k1")
        assert len(generated() - before) == 1
        r2 = c.create_receiver("/topic/news.*")
        c.create_sender(f"/exchange/{ex}/k1").send(Message(body="direct"))
        c.create_sender("/topic/news.today").send(Message(body="topic"))
        assert r1.receive(timeout=5).body == "direct"
        r1.accept()
        assert r2.receive(timeout=5).body == "topic"
        r2.accept()
        with pytest.raises(Exception):  # noqa: B017 - proton's Timeout: nothing else came
            r1.receive(timeout=0.5)  # the topic message is not r1's
        r1.close()
        r2.close()
        deadline = time.monotonic() + 5
        while generated() - before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert generated() - before == set()  # the links' queues went with them
        with pytest.raises(LinkDetached) as info:
            c.create_receiver("/exchange/missing-exchange/k")
        assert "amqp:not-found" in str(info.value)
    finally:
        c.close()


def test_a_quorum_queue_gives_its_failed_deliveries_as_the_header_delivery_count(node):
    """Two 0-9-1 requeues of a quorum queue's message are two failed deliveries: a 1.0 consumer
    reads them in the header's delivery-count (a 0-9-1 one in x-delivery-count)."""
    q = _queue(node, durable=True, arguments={"x-queue-type": "quorum"})
    conn, ch = channel091(node)
    ch.basic_publish("", q, b"twice")
    for _ in range(2):
        method, _props, _body = ch.basic_get(q, auto_ack=False)
        ch.basic_reject(method.delivery_tag, requeue=True)
    conn.close()
    c = blocking(node)
    r = c.create_receiver(f"/queues/{q}", credit=1)
    m = r.receive(timeout=5)
    assert m.delivery_count == 2 and not m.first_acquirer
    r.accept()
    c.close()
