"""The 0-9-1 delivery acknowledgement timeout (RabbitMQ's consumer_timeout), in memory.

The checks are driven here by calling `Connection091.check_acks(now)` with made-up monotonic
times, so nothing sleeps: a delivery's age is only known through the marks the checks take, which
is what these tests pin down (never closed early, closed once a check proves the oldest delivery
older than its queue's timeout). The timers the connection asks its shell for are recorded by the
fake shell and fired by hand.
"""

from __future__ import annotations

from types import SimpleNamespace

from merpati.node.amqp091.channel_consume import CHECK_MAX, CHECK_MIN, MAX_MARKS, check_period
from merpati.node.core.queue_args import effective_arguments, parse
from merpati.node.metadata import commands as cmds
from tests.support.amqp091 import PRECONDITION_FAILED, Client, in_loop, new_broker, spec

TEXT = (
    "PRECONDITION_FAILED - delivery acknowledgement on channel {ch} timed out. Timeout value "
    "used: {ms} ms. This timeout value can be configured, see consumers doc guide to learn more"
)


async def opened(*channels: int, node_timeout: int = 500) -> Client:
    broker = await new_broker()
    broker.consumer_timeout = node_timeout
    c = Client(broker)
    c.open(*channels)
    return c


def consume(c: Client, queue: str, tag: str = "ctag", channel: int = 1, **fields):
    return c.send(channel, spec.BasicConsume(queue=queue, consumer_tag=tag, **fields))


def closes(c: Client, now: float) -> list:
    """Run a check at `now`; the channel.close methods it wrote."""
    c.conn.check_acks(now)
    return [f for f in c.take() if f.is_(spec.ChannelClose)]


@in_loop
async def test_an_unacked_delivery_closes_its_channel_with_rabbitmqs_406_and_is_redelivered() -> (
    None
):
    c = await opened(1, 2)
    c.declare(1, "work")
    consume(c, "work")
    out = c.publish(2, "", "work", b"m")
    assert [f.name for f in out] == ["basic.deliver"]
    assert closes(c, 100.0) == []  # the first check marks the delivery: it went out by now
    assert closes(c, 100.499) == []
    (close,) = closes(c, 100.5)
    assert close.channel == 1
    assert close.method == spec.ChannelClose(PRECONDITION_FAILED, TEXT.format(ch=1, ms=500), 0, 0)
    assert c.conn.channels[1].closing and c.conn.channels[1].unacked == {}
    # The other channel is untouched; the message is back, marked redelivered.
    (got,) = c.send(2, spec.BasicGet(queue="work", no_ack=True))
    assert got.is_(spec.BasicGetOk) and got.method.redelivered is True and got.body == b"m"
    assert c.send(1, spec.ChannelCloseOk()) == []
    assert 1 not in c.conn.channels


@in_loop
async def test_acked_deliveries_never_time_out() -> None:
    c = await opened()
    c.declare(1, "work")
    consume(c, "work")
    for i in range(1, 4):
        c.publish(1, "", "work", b"m")
        assert closes(c, 100.0 * i) == []
        c.send(1, spec.BasicAck(delivery_tag=i))
    assert closes(c, 10_000.0) == []
    assert not c.conn.channels[1].ack_marks  # nothing unacked: no marks kept
    assert c.conn.channels[1].is_open and not c.conn.channels[1].closing


@in_loop
async def test_only_the_oldest_delivery_counts_and_never_before_a_check_proves_it_old() -> None:
    """m1 goes out before the check at t=0, m2 between the checks at 0.2 and 0.3. Once m1 is
    acked, m2 is the oldest: it is known to be out since 0.3 at the latest, so the channel
    closes at 0.8, not at 0.5 or 0.7 (what m1's age would say)."""
    c = await opened()
    c.declare(1, "work")
    consume(c, "work")
    c.publish(1, "", "work", b"m1")
    assert closes(c, 0.0) == []
    assert closes(c, 0.2) == []
    c.publish(1, "", "work", b"m2")
    assert closes(c, 0.3) == []
    c.send(1, spec.BasicAck(delivery_tag=1))
    assert closes(c, 0.5) == [] and closes(c, 0.7) == []
    (close,) = closes(c, 0.8)
    assert close.method.reply_code == PRECONDITION_FAILED


@in_loop
async def test_basic_get_with_ack_times_out_and_without_ack_is_not_watched() -> None:
    c = await opened()
    c.declare(1, "g")
    c.publish(1, "", "g", b"a")
    c.publish(1, "", "g", b"b")
    c.send(1, spec.BasicGet(queue="g", no_ack=True))
    assert c.shell.armed == []  # nothing to acknowledge, nothing to check
    c.send(1, spec.BasicGet(queue="g"))
    (timer,) = c.shell.armed
    assert timer.delay == check_period(500)
    assert closes(c, 1.0) == []
    (close,) = closes(c, 1.5)
    assert close.method.reply_text == TEXT.format(ch=1, ms=500)


@in_loop
async def test_node_timeout_zero_disables_it() -> None:
    c = await opened(node_timeout=0)
    c.declare(1, "work")
    consume(c, "work")
    c.publish(1, "", "work", b"m")
    assert closes(c, 0.0) == [] and closes(c, 1e9) == []
    assert c.conn.channels[1].is_open


@in_loop
async def test_x_consumer_timeout_overrides_the_node_setting_both_ways() -> None:
    c = await opened(1, 2, node_timeout=0)
    c.declare(1, "short", arguments={"x-consumer-timeout": 200})
    c.declare(2, "plain")
    consume(c, "short", channel=1)
    consume(c, "plain", channel=2)
    c.publish(1, "", "short", b"s")
    c.publish(1, "", "plain", b"p")
    assert closes(c, 0.0) == []
    (close,) = closes(c, 0.2)
    assert close.channel == 1 and close.method.reply_text == TEXT.format(ch=1, ms=200)
    assert closes(c, 1e9) == []  # "plain" has no limit: the node's is off

    c = await opened(node_timeout=500)
    c.declare(1, "long", arguments={"x-consumer-timeout": 60_000})
    consume(c, "long")
    c.publish(1, "", "long", b"l")
    assert closes(c, 0.0) == [] and closes(c, 59.9) == []
    (close,) = closes(c, 60.0)
    assert close.method.reply_text == TEXT.format(ch=1, ms=60_000)


@in_loop
async def test_policy_consumer_timeout_applies_and_the_smaller_of_policy_and_argument_wins() -> (
    None
):
    c = await opened(1, 2, 3, node_timeout=0)
    await c.broker.propose(cmds.SetPolicy("/", "ct", "^p", {"consumer-timeout": 300}))
    c.declare(1, "p.only")
    c.declare(2, "p.arg-longer", arguments={"x-consumer-timeout": 5000})
    c.declare(3, "p.arg-shorter", arguments={"x-consumer-timeout": 100})
    b = c.broker
    assert b.consumer_timeout_of(b.queue("/", "p.only")) == 300
    assert b.consumer_timeout_of(b.queue("/", "p.arg-longer")) == 300
    assert b.consumer_timeout_of(b.queue("/", "p.arg-shorter")) == 100
    # A handle of a queue led elsewhere gets the same answer from the metadata.
    for name, ms in (("p.only", 300), ("p.arg-longer", 300), ("p.arg-shorter", 100)):
        assert b.consumer_timeout_of(SimpleNamespace(vhost="/", name=name)) == ms  # type: ignore[arg-type]
    for n, q in ((1, "p.only"), (2, "p.arg-longer"), (3, "p.arg-shorter")):
        consume(c, q, channel=n)
        c.publish(n, "", q, b"m")
    assert closes(c, 0.0) == []
    assert [(f.channel, f.method.reply_text) for f in closes(c, 0.1)] == [
        (3, TEXT.format(ch=3, ms=100))
    ]
    assert sorted((f.channel, f.method.reply_text) for f in closes(c, 0.3)) == [
        (1, TEXT.format(ch=1, ms=300)),
        (2, TEXT.format(ch=2, ms=300)),
    ]


@in_loop
async def test_a_quorum_queues_deliveries_time_out_too_and_count_as_failed() -> None:
    c = await opened(1, 2)
    c.declare(1, "qq", durable=True, arguments={"x-queue-type": "quorum"})
    consume(c, "qq")
    c.publish(2, "", "qq", b"m", properties={"delivery_mode": 2})
    assert closes(c, 0.0) == []
    (close,) = closes(c, 0.5)
    assert close.channel == 1 and close.method.reply_code == PRECONDITION_FAILED
    (got,) = c.send(2, spec.BasicGet(queue="qq", no_ack=True))
    assert got.method.redelivered and got.properties["headers"]["x-delivery-count"] == 1


@in_loop
async def test_the_timer_follows_the_shortest_timeout_and_stops_with_nothing_to_watch() -> None:
    c = await opened(node_timeout=1_800_000)
    c.declare(1, "slow")
    c.declare(1, "fast", arguments={"x-consumer-timeout": 400})
    consume(c, "slow", tag="s")
    (timer,) = c.shell.armed
    assert timer.delay == CHECK_MAX  # 30 min: once a minute, as RabbitMQ
    consume(c, "fast", tag="f")
    (timer,) = c.shell.armed  # re-armed sooner, the old one cancelled
    assert timer.delay == check_period(400) == 0.1
    timer.fire()
    (timer,) = c.shell.armed
    assert timer.delay == 0.1
    c.send(1, spec.BasicCancel(consumer_tag="f"))
    timer.fire()
    (timer,) = c.shell.armed
    assert timer.delay == CHECK_MAX
    c.send(1, spec.BasicCancel(consumer_tag="s"))
    timer.fire()
    assert c.shell.armed == []  # no ack-mode consumer, nothing unacked: no more checks


@in_loop
async def test_the_timer_drives_the_checks_and_a_late_one_waits_a_loop_turn_first() -> None:
    """A check that fires well after its time (the loop was held up: acks may wait unread in
    the socket) asks for one more loop turn before it decides."""
    c = await opened()
    clock = [100.0]
    c.conn.clock = lambda: clock[0]
    c.declare(1, "work")
    consume(c, "work")
    c.publish(1, "", "work", b"m")
    (timer,) = c.shell.armed
    assert timer.delay == 0.125
    clock[0] = 100.125
    timer.fire()  # on time: marks the delivery
    (timer,) = c.shell.armed
    assert timer.delay == 0.125 and c.take() == []
    clock[0] = 101.0  # 0.75 s late
    timer.fire()
    (timer,) = c.shell.armed
    assert timer.delay == 0 and c.take() == []  # deferred, nothing closed yet
    timer.fire()
    (close,) = [f for f in c.take() if f.is_(spec.ChannelClose)]
    assert close.method.reply_text == TEXT.format(ch=1, ms=500)


@in_loop
async def test_closing_the_connection_cancels_the_timer() -> None:
    c = await opened()
    c.declare(1, "work")
    consume(c, "work")
    assert len(c.shell.armed) == 1
    c.send(0, spec.ConnectionClose(reply_code=200))
    assert c.shell.armed == []


@in_loop
async def test_marks_stay_bounded_while_the_oldest_delivery_has_no_limit() -> None:
    c = await opened(node_timeout=0)
    c.declare(1, "work")
    consume(c, "work")
    c.publish(1, "", "work", b"stuck")
    for i in range(1000):
        c.publish(1, "", "work", b"m")
        c.conn.check_acks(float(i))
        c.send(1, spec.BasicAck(delivery_tag=i + 2))
    assert len(c.conn.channels[1].ack_marks) <= MAX_MARKS + 1


@in_loop
async def test_a_bad_x_consumer_timeout_is_406_on_declare_and_redeclaring_another_is_accepted() -> (
    None
):
    c = await opened(1, 2, 3)
    for n, value, why in (
        (1, "soon", "expected an integer, got 'soon'"),
        (2, -1, "value -1 is out of range"),
    ):
        f = c.declare(n, "bad", arguments={"x-consumer-timeout": value})
        assert f.is_(spec.ChannelClose), f.name
        assert f.method.reply_code == PRECONDITION_FAILED
        assert f.method.reply_text == (
            "PRECONDITION_FAILED - invalid arg 'x-consumer-timeout' for queue 'bad' in vhost '/': "
            + why
        )
    assert c.broker.state.queue("/", "bad") is None
    assert c.declare(3, "q", arguments={"x-consumer-timeout": 0}).is_(spec.QueueDeclareOk)
    # As RabbitMQ, which leaves x-consumer-timeout out of its equivalence check: the queue keeps
    # the value it was declared with.
    assert c.declare(3, "q", arguments={"x-consumer-timeout": 2000}).is_(spec.QueueDeclareOk)
    assert c.declare(3, "q").is_(spec.QueueDeclareOk)
    assert c.broker.consumer_timeout_of(c.broker.queue("/", "q")) == 0


def test_check_period():
    assert check_period(None) == CHECK_MAX
    assert check_period(1_800_000) == CHECK_MAX
    assert check_period(2000) == 0.5
    assert check_period(0) == CHECK_MIN


def test_queue_options_take_the_smaller_of_argument_and_policy_and_ignore_bad_policy_values():
    def timeout(args, policy=None):
        return parse(effective_arguments(args, policy)).consumer_timeout

    assert timeout({}) is None
    assert timeout({"x-consumer-timeout": 700}) == 700
    assert timeout({}, {"consumer-timeout": 900}) == 900
    assert timeout({"x-consumer-timeout": 700}, {"consumer-timeout": 900}) == 700
    assert timeout({"x-consumer-timeout": 1700}, {"consumer-timeout": 900}) == 900
    # Policies are not validated when set: a bad value is ignored, never the smaller one.
    assert timeout({"x-consumer-timeout": 700}, {"consumer-timeout": -1}) == 700
    assert timeout({}, {"consumer-timeout": "900"}) is None
