"""AMQP 0-9-1 channels in memory: declare/bind, publish -> deliver -> ack, confirms, basic.get,
reject/requeue, qos, flow, and the channel errors (which close the channel, not the connection).

Same harness as test_amqp091_connection.py: client frames into a `Connection091` on a fake shell
over a `Broker` with in-memory metadata and no store; the frames the server writes are asserted.
"""

from __future__ import annotations

import asyncio

from merpati.node.broker import Broker, hash_password
from merpati.node.metadata import commands as cmds
from merpati.node.metadata.log import LocalLog
from tests.support.amqp091 import (
    ACCESS_REFUSED,
    CHANNEL_ERROR,
    NOT_ALLOWED,
    NOT_FOUND,
    PRECONDITION_FAILED,
    Client,
    in_loop,
    new_broker,
    spec,
)


def channel_close(frames, channel: int = 1):
    """The single channel.close among `frames`, on `channel`."""
    closes = [f for f in frames if f.is_(spec.ChannelClose)]
    assert len(closes) == 1 and closes[0].channel == channel, [f.name for f in frames]
    return closes[0].method


async def opened(*channels: int) -> Client:
    c = Client(await new_broker())
    c.open(*channels)
    return c


def consume(c: Client, queue: str, tag: str = "ctag", channel: int = 1, **fields):
    return c.send(channel, spec.BasicConsume(queue=queue, consumer_tag=tag, **fields))


@in_loop
async def test_channel_open_close_and_reuse_of_its_number() -> None:
    c = await opened()
    assert [f.name for f in c.send(1, spec.ChannelClose(reply_code=200))] == ["channel.close-ok"]
    assert 1 not in c.conn.channels
    assert [f.name for f in c.send(1, spec.ChannelOpen())] == ["channel.open-ok"]
    assert c.conn.state == "running"


@in_loop
async def test_second_open_of_a_channel_is_a_504_connection_error() -> None:
    c = await opened()
    out = c.send(1, spec.ChannelOpen())
    close = [f.method for f in out if f.is_(spec.ConnectionClose)]
    assert close and close[0].reply_code == CHANNEL_ERROR and close[0].class_id == 20


@in_loop
async def test_channel_max_bounds_the_channels_open_not_their_numbers() -> None:
    """As RabbitMQ: channel 65535 opens (aiormq uses it) while fewer than channel_max are open."""
    c = Client(await new_broker())
    c.handshake(channel_max=2)
    assert [f.method for f in c.send(65535, spec.ChannelOpen())] == [spec.ChannelOpenOk()]
    assert [f.method for f in c.send(7, spec.ChannelOpen())] == [spec.ChannelOpenOk()]
    out = c.send(8, spec.ChannelOpen())  # a third one
    close = [f.method for f in out if f.is_(spec.ConnectionClose)]
    assert [m.reply_code for m in close] == [NOT_ALLOWED]
    assert "channel_max (2)" in close[0].reply_text


@in_loop
async def test_declare_then_passive_declare_reports_counts() -> None:
    c = await opened()
    ok = c.declare(1, "q1", durable=True)
    assert ok.is_(spec.QueueDeclareOk) and ok.method == spec.QueueDeclareOk("q1", 0, 0)
    c.publish(1, "", "q1", b"a")
    c.publish(1, "", "q1", b"b")
    ok = c.declare(1, "q1", passive=True)
    assert ok.method == spec.QueueDeclareOk("q1", 2, 0)


@in_loop
async def test_server_named_queue_and_empty_name_means_the_last_one() -> None:
    c = await opened()
    ok = c.declare(1, "", exclusive=True)
    name = ok.method.queue
    assert name.startswith("amq.gen-")
    # queue.declare passive with an empty name: the channel's last declared queue.
    assert c.declare(1, "", passive=True).method.queue == name


@in_loop
async def test_passive_declare_of_a_missing_queue_is_404_on_that_channel_only() -> None:
    c = await opened(1, 2)
    close = channel_close([c.declare(1, "nope", passive=True)])
    assert close.reply_code == NOT_FOUND and (close.class_id, close.method_id) == (50, 10)
    assert "no queue 'nope' in vhost '/'" in close.reply_text
    # Until the client's close-ok, the closed channel ignores what it sends; others work on.
    assert c.send(1, spec.BasicQos(prefetch_count=1)) == []
    assert c.declare(2, "other").is_(spec.QueueDeclareOk)
    assert c.send(1, spec.ChannelCloseOk()) == []
    assert 1 not in c.conn.channels and c.conn.state == "running"


@in_loop
async def test_inequivalent_redeclare_is_406() -> None:
    c = await opened()
    c.declare(1, "q", durable=False)
    close = channel_close([c.declare(1, "q", durable=True)])
    assert close.reply_code == PRECONDITION_FAILED and "durable" in close.reply_text


@in_loop
async def test_reserved_amq_prefix_is_403() -> None:
    c = await opened()
    close = channel_close([c.declare(1, "amq.mine")])
    assert close.reply_code == ACCESS_REFUSED


@in_loop
async def test_exclusive_queue_is_locked_to_its_connection_405() -> None:
    broker = await new_broker()
    owner, other = Client(broker), Client(broker)
    owner.open()
    other.open()
    owner.declare(1, "mine", exclusive=True)
    close = channel_close([other.declare(1, "mine", passive=True)])
    assert close.reply_code == 405 and "exclusive access to locked queue" in close.reply_text


@in_loop
async def test_bind_routes_and_binding_to_a_missing_exchange_is_404() -> None:
    c = await opened(1, 2)
    out = c.send(1, spec.ExchangeDeclare(exchange="logs", type="topic"))
    assert [f.name for f in out] == ["exchange.declare-ok"]
    c.declare(1, "errors")
    out = c.send(1, spec.QueueBind(queue="errors", exchange="logs", routing_key="*.error"))
    assert [f.name for f in out] == ["queue.bind-ok"]
    c.publish(1, "logs", "db.error", b"e1")
    c.publish(1, "logs", "db.info", b"i1")
    assert c.declare(1, "errors", passive=True).method.message_count == 1

    out = c.send(2, spec.QueueBind(queue="errors", exchange="missing", routing_key="k"))
    close = channel_close(out, channel=2)
    assert close.reply_code == NOT_FOUND and (close.class_id, close.method_id) == (50, 20)


@in_loop
async def test_publish_deliver_ack() -> None:
    c = await opened()
    c.declare(1, "work")
    out = consume(c, "work")
    assert [f.name for f in out] == ["basic.consume-ok"]
    props = {"content_type": "text/plain", "message_id": "m1"}
    out = c.publish(1, "", "work", b"hello", properties=props)
    assert [f.name for f in out] == ["basic.deliver"]
    d = out[0]
    assert d.method == spec.BasicDeliver("ctag", 1, False, "", "work")
    assert d.body == b"hello"
    assert d.properties == {"content_type": "text/plain", "message_id": "m1"}
    assert c.declare(1, "work", passive=True).method == spec.QueueDeclareOk("work", 0, 1)
    assert c.send(1, spec.BasicAck(delivery_tag=1)) == []
    assert c.conn.channels[1].unacked == {}


@in_loop
async def test_large_body_is_split_at_frame_max() -> None:
    c = Client(await new_broker())
    names = [f.name for f in c.handshake(frame_max=4096)]
    assert names[-1] == "connection.open-ok"
    c.send(1, spec.ChannelOpen())
    c.declare(1, "big")
    consume(c, "big", no_ack=True)
    body = bytes(range(256)) * 40  # 10240 bytes: three body frames of at most 4088
    (d,) = c.publish(1, "", "big", body)
    assert d.body == body and [len(p) for p in d.body_frames] == [4088, 4088, 2064]


@in_loop
async def test_unknown_delivery_tag_is_406() -> None:
    c = await opened()
    close = channel_close(c.send(1, spec.BasicAck(delivery_tag=42)))
    assert close.reply_code == PRECONDITION_FAILED and "unknown delivery tag 42" in close.reply_text


@in_loop
async def test_confirms_coalesce_into_one_multiple_ack_per_flush() -> None:
    c = await opened()
    assert [f.name for f in c.send(1, spec.ConfirmSelect())] == ["confirm.select-ok"]
    c.declare(1, "conf")
    pub = b"".join(c.publish_bytes(1, "", "conf", b"m%d" % i) for i in range(3))  # one read
    out = c.feed(pub)
    assert [(f.name, f.method) for f in out] == [("basic.ack", spec.BasicAck(3, True))]


@in_loop
async def test_mandatory_unroutable_is_returned_then_confirmed() -> None:
    c = await opened()
    c.send(1, spec.ConfirmSelect())
    out = c.publish(
        1, "amq.direct", "nobody", b"lost", properties={"message_id": "x"}, mandatory=True
    )
    assert [f.name for f in out] == ["basic.return", "basic.ack"]
    ret = out[0]
    assert ret.method == spec.BasicReturn(312, "NO_ROUTE", "amq.direct", "nobody")
    assert ret.body == b"lost" and ret.properties == {"message_id": "x"}
    assert out[1].method == spec.BasicAck(1, True)


@in_loop
async def test_publish_to_a_missing_exchange_is_404_blaming_basic_publish() -> None:
    c = await opened()
    close = channel_close(c.publish(1, "no-such-exchange", "k", b"x"))
    assert close.reply_code == NOT_FOUND and (close.class_id, close.method_id) == (60, 40)


@in_loop
async def test_basic_get_ok_and_empty() -> None:
    c = await opened()
    c.declare(1, "g")
    c.publish(1, "", "g", b"one")
    c.publish(1, "", "g", b"two")
    (got,) = c.send(1, spec.BasicGet(queue="g"))
    assert got.method == spec.BasicGetOk(1, False, "", "g", 1) and got.body == b"one"
    (got,) = c.send(1, spec.BasicGet(queue="g", no_ack=True))
    assert got.method.message_count == 0 and got.body == b"two"
    assert 2 not in c.conn.channels[1].unacked  # no_ack: nothing to settle
    assert [f.name for f in c.send(1, spec.BasicGet(queue="g"))] == ["basic.get-empty"]


@in_loop
async def test_get_from_a_missing_queue_is_404() -> None:
    c = await opened()
    close = channel_close(c.send(1, spec.BasicGet(queue="nope")))
    assert close.reply_code == NOT_FOUND and (close.class_id, close.method_id) == (60, 70)


@in_loop
async def test_reject_with_requeue_redelivers_and_without_drops() -> None:
    c = await opened()
    c.declare(1, "r")
    c.publish(1, "", "r", b"m")
    (got,) = c.send(1, spec.BasicGet(queue="r"))
    assert got.method.redelivered is False
    assert c.send(1, spec.BasicReject(delivery_tag=got.method.delivery_tag, requeue=True)) == []
    (again,) = c.send(1, spec.BasicGet(queue="r"))
    assert again.method.redelivered is True and again.body == b"m"
    c.send(1, spec.BasicNack(delivery_tag=again.method.delivery_tag, requeue=False))
    assert c.declare(1, "r", passive=True).method.message_count == 0


@in_loop
async def test_channel_close_requeues_unacked_deliveries() -> None:
    c = await opened(1, 2)
    c.declare(1, "u")
    c.publish(1, "", "u", b"m")
    c.send(2, spec.BasicGet(queue="u"))
    assert c.declare(1, "u", passive=True).method.message_count == 0
    c.send(2, spec.ChannelClose(reply_code=200))
    (again,) = c.send(1, spec.BasicGet(queue="u", no_ack=True))
    assert again.method.redelivered is True


QUORUM = {"x-queue-type": "quorum"}


@in_loop
async def test_a_quorum_queue_redelivery_carries_x_delivery_count() -> None:
    """Absent on the first delivery; then the failed deliveries so far (a long, as RabbitMQ),
    next to the message's own headers, on basic.get and basic.deliver alike."""
    c = await opened(1, 2)
    c.declare(1, "qq", durable=True, arguments=QUORUM)
    c.publish(1, "", "qq", b"m", properties={"headers": {"app": "kept"}, "delivery_mode": 2})
    (got,) = c.send(1, spec.BasicGet(queue="qq"))
    assert got.properties["headers"] == {"app": "kept"}
    c.send(1, spec.BasicReject(delivery_tag=got.method.delivery_tag, requeue=True))
    (got,) = c.send(1, spec.BasicGet(queue="qq"))
    assert got.properties["headers"] == {"app": "kept", "x-delivery-count": 1}
    assert got.properties["delivery_mode"] == 2
    c.send(1, spec.BasicNack(delivery_tag=got.method.delivery_tag, requeue=True))
    out = consume(c, "qq", channel=2)
    deliver = [f for f in out if f.name == "basic.deliver"][0]
    assert deliver.properties["headers"]["x-delivery-count"] == 2
    # The channel closing with the delivery unsettled counts too (RabbitMQ's consumer down).
    c.send(2, spec.ChannelClose(reply_code=200))
    (got,) = c.send(1, spec.BasicGet(queue="qq", no_ack=True))
    assert got.properties["headers"]["x-delivery-count"] == 3


@in_loop
async def test_a_classic_queue_adds_no_delivery_count_header() -> None:
    c = await opened()
    c.declare(1, "cq")
    c.publish(1, "", "cq", b"m")
    for _ in range(2):
        (got,) = c.send(1, spec.BasicGet(queue="cq"))
        c.send(1, spec.BasicReject(delivery_tag=got.method.delivery_tag, requeue=True))
    (got,) = c.send(1, spec.BasicGet(queue="cq"))
    assert got.method.redelivered and not (got.properties or {}).get("headers")


@in_loop
async def test_prefetch_holds_deliveries_until_ack() -> None:
    c = await opened()
    c.declare(1, "p")
    assert [f.name for f in c.send(1, spec.BasicQos(prefetch_count=1))] == ["basic.qos-ok"]
    for i in range(3):
        c.publish(1, "", "p", b"%d" % i)
    out = consume(c, "p")
    assert [f.name for f in out] == ["basic.consume-ok", "basic.deliver"]
    assert out[1].body == b"0"
    out = c.send(1, spec.BasicAck(delivery_tag=1))
    assert [(f.name, f.body) for f in out] == [("basic.deliver", b"1")]
    # A new per-consumer limit is for consumers started after it, as in RabbitMQ.
    assert [f.name for f in c.send(1, spec.BasicQos(prefetch_count=10))] == ["basic.qos-ok"]
    out = c.send(1, spec.BasicAck(delivery_tag=2))
    assert [(f.name, f.body) for f in out] == [("basic.deliver", b"2")]


@in_loop
async def test_channel_flow_pauses_and_resumes_deliveries() -> None:
    c = await opened()
    c.declare(1, "f")
    consume(c, "f", no_ack=True)
    out = c.send(1, spec.ChannelFlow(active=False))
    assert out[0].method == spec.ChannelFlowOk(active=False)
    assert c.publish(1, "", "f", b"held") == []
    out = c.send(1, spec.ChannelFlow(active=True))
    assert [(f.name, f.body) for f in out] == [("channel.flow-ok", b""), ("basic.deliver", b"held")]


@in_loop
async def test_cancel_stops_deliveries_and_reused_tag_is_530() -> None:
    c = await opened()
    c.declare(1, "c")
    consume(c, "c", no_ack=True)
    out = consume(c, "c", no_ack=True)  # same tag on the same channel: a connection error
    assert [f.method.reply_code for f in out if f.is_(spec.ConnectionClose)] == [NOT_ALLOWED]

    c = await opened()
    c.declare(1, "c2")
    consume(c, "c2", no_ack=True)
    out = c.send(1, spec.BasicCancel(consumer_tag="ctag"))
    assert out[0].method == spec.BasicCancelOk(consumer_tag="ctag")
    assert c.publish(1, "", "c2", b"stays") == []
    assert c.declare(1, "c2", passive=True).method == spec.QueueDeclareOk("c2", 1, 0)


@in_loop
async def test_tx_commit_and_rollback() -> None:
    c = await opened()
    c.declare(1, "t")
    assert [f.name for f in c.send(1, spec.TxSelect())] == ["tx.select-ok"]
    c.publish(1, "", "t", b"kept")
    assert c.declare(1, "t", passive=True).method.message_count == 0  # not before commit
    assert [f.name for f in c.send(1, spec.TxCommit())] == ["tx.commit-ok"]
    c.publish(1, "", "t", b"dropped")
    assert [f.name for f in c.send(1, spec.TxRollback())] == ["tx.rollback-ok"]
    assert c.declare(1, "t", passive=True).method.message_count == 1
    close = channel_close(c.send(1, spec.ConfirmSelect()))
    assert close.reply_code == PRECONDITION_FAILED


@in_loop
async def test_connection_close_deletes_exclusive_queues_before_close_ok() -> None:
    c = await opened()
    c.declare(1, "excl", exclusive=True)
    out = c.send(0, spec.ConnectionClose(reply_code=200))
    out += await c.settle()
    assert [f.name for f in out] == ["connection.close-ok"]
    assert c.broker.state.queue("/", "excl") is None


@in_loop
async def test_declaring_the_default_exchange_is_403_passive_or_not() -> None:
    """As RabbitMQ: aiormq checks that a passive declare of "" is refused."""
    c = await opened()
    for passive in (False, True):
        out = c.send(1, spec.ExchangeDeclare(exchange="", type="direct", passive=passive))
        (close,) = [f.method for f in out if f.is_(spec.ChannelClose)]
        assert close.reply_code == ACCESS_REFUSED
        assert (
            close.reply_text == "ACCESS_REFUSED - operation not permitted on the default exchange"
        )
        c.send(1, spec.ChannelCloseOk())
        assert [f.name for f in c.send(1, spec.ChannelOpen())] == ["channel.open-ok"]


@in_loop
async def test_queue_delete_ok_comes_before_the_cancel_of_the_channels_own_consumer() -> None:
    """As RabbitMQ: py-amqp (kombu) and amqplib wait for delete-ok and trip over a cancel first."""
    c = Client(await new_broker())
    c.handshake(capabilities={"consumer_cancel_notify": True})
    c.send(1, spec.ChannelOpen())
    c.declare(1, "gone")
    c.send(1, spec.BasicConsume(queue="gone", consumer_tag="mine"))
    out = c.send(1, spec.QueueDelete(queue="gone"))
    assert [f.name for f in out] == ["queue.delete-ok", "basic.cancel"]
    assert out[1].method.consumer_tag == "mine"
    assert not c.conn.channels[1].held_cancels


# -- direct reply-to --------------------------------------------------------------------------


@in_loop
async def test_direct_reply_to_round_trip_and_its_errors() -> None:
    c = await opened(1, 2)  # channel 1: the RPC client; channel 2: the server
    c.declare(2, "rpc")
    # A reply consumer must be no-ack, and one per channel.
    out = c.send(1, spec.BasicConsume(queue="amq.rabbitmq.reply-to", no_ack=False))
    (close,) = [f.method for f in out if f.is_(spec.ChannelClose)]
    assert close.reply_code == PRECONDITION_FAILED and "cannot acknowledge" in close.reply_text
    c.send(1, spec.ChannelCloseOk())
    c.send(1, spec.ChannelOpen())
    # Publishing with reply_to amq.rabbitmq.reply-to needs that consumer first.
    out = c.publish(1, "", "rpc", b"early", properties={"reply_to": "amq.rabbitmq.reply-to"})
    (close,) = [f.method for f in out if f.is_(spec.ChannelClose)]
    assert close.reply_code == PRECONDITION_FAILED
    assert "fast reply consumer does not exist" in close.reply_text
    c.send(1, spec.ChannelCloseOk())
    c.send(1, spec.ChannelOpen())
    ok = c.send(1, spec.BasicConsume(queue="amq.rabbitmq.reply-to", consumer_tag="r", no_ack=True))
    assert [f.name for f in ok] == ["basic.consume-ok"]
    c.publish(1, "", "rpc", b"ping", properties={"reply_to": "amq.rabbitmq.reply-to"})
    # The server sees a name of the channel's own, and replies to it through "".
    (got,) = [
        f for f in c.send(2, spec.BasicGet(queue="rpc", no_ack=True)) if f.is_(spec.BasicGetOk)
    ]
    reply_to = got.properties["reply_to"]
    assert reply_to.startswith("amq.rabbitmq.reply-to.") and reply_to != "amq.rabbitmq.reply-to"
    out = c.publish(2, "", reply_to, b"pong", properties={"correlation_id": "1"})
    (deliver,) = [f for f in out if f.is_(spec.BasicDeliver)]
    assert deliver.channel == 1 and deliver.body == b"pong"
    assert deliver.method.consumer_tag == "r" and deliver.method.routing_key == reply_to
    # Once the consumer is gone the name routes nowhere: a mandatory reply comes back.
    c.send(1, spec.BasicCancel(consumer_tag="r"))
    out = c.publish(2, "", reply_to, b"late", mandatory=True)
    assert [f.name for f in out] == ["basic.return"] and out[0].method.reply_code == 312
    # The pseudo-queue always exists to a passive declare.
    ok = c.send(1, spec.QueueDeclare(queue="amq.rabbitmq.reply-to", passive=True))
    assert [f.name for f in ok] == ["queue.declare-ok"]


class LaggingLog(LocalLog):
    """A node's log that has not yet applied what the cluster committed (`behind`): a barrier
    applies it, as the node's Raft would before the barrier's own entry."""

    def __init__(self) -> None:
        super().__init__()
        self.behind: list = []
        self.barriers = 0

    def barrier(self):
        self.barriers += 1
        fut = asyncio.get_running_loop().create_future()

        def catch_up() -> None:
            for cmd in self.behind:
                self.apply(cmd)
            self.behind.clear()
            fut.set_result(None)

        asyncio.get_running_loop().call_soon(catch_up)
        return fut


async def lagging() -> tuple[Client, LaggingLog]:
    log = LaggingLog()
    broker = Broker("n1", log)
    await broker.propose(cmds.AddVhost("/"))
    await broker.propose(cmds.PutUser("guest", hash_password("guest"), ("administrator",)))
    await broker.propose(cmds.SetPermissions("guest", "/"))
    c = Client(broker)
    c.open(1)
    return c, log


@in_loop
async def test_a_queue_another_node_declared_is_found_once_this_node_caught_up() -> None:
    c, log = await lagging()
    log.behind.append(cmds.DeclareQueue("/", "elsewhere", False, leader="n1"))
    # Not applied here yet: the channel waits (later frames wait behind it) instead of a 404.
    assert c.send(1, spec.QueueDeclare(queue="elsewhere", passive=True)) == []
    assert c.publish_method(1, "", "elsewhere") == []
    await asyncio.sleep(0.01)
    assert [f.method for f in c.take()] == [spec.QueueDeclareOk("elsewhere", 0, 0)]
    assert log.barriers == 1


@in_loop
async def test_a_name_nobody_declared_is_404_after_one_barrier() -> None:
    c, log = await lagging()
    assert c.send(1, spec.BasicConsume(queue="nowhere", consumer_tag="t")) == []
    await asyncio.sleep(0.01)
    close = channel_close(c.take())
    assert (
        close.reply_code == NOT_FOUND
        and close.reply_text == "NOT_FOUND - no queue 'nowhere' in vhost '/'"
    )
    assert (close.class_id, close.method_id) == (60, 20)
    assert log.barriers == 1


@in_loop
async def test_a_publish_to_an_exchange_another_node_declared_is_routed_once_caught_up() -> None:
    c, log = await lagging()
    log.behind += [
        cmds.DeclareExchange("/", "x-elsewhere", "fanout"),
        cmds.DeclareQueue("/", "qx", False, leader="n1"),
        cmds.Bind("/", "x-elsewhere", "q", "qx", ""),
    ]
    assert [f.method for f in c.send(1, spec.ConfirmSelect())] == [spec.ConfirmSelectOk()]
    c.feed(c.publish_bytes(1, "x-elsewhere", "", b"hello"))
    await asyncio.sleep(0.01)
    assert [f.method for f in c.take()] == [spec.BasicAck(delivery_tag=1, multiple=True)]
    assert c.declare(1, "qx", passive=True).method == spec.QueueDeclareOk("qx", 1, 0)
