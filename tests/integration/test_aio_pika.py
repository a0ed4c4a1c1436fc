"""aio-pika (robust connections, confirms, iterators) against a real node.

No pytest-asyncio here: each test is a sync function running one coroutine with `asyncio.run`, bounded
by `asyncio.timeout` so a broker that never answers fails the test instead of hanging it.
"""

from __future__ import annotations

import asyncio

import aio_pika
import aiormq
import pytest
from aio_pika import DeliveryMode, ExchangeType, Message
from aio_pika.exceptions import ChannelClosed, PublishError, QueueEmpty
from pamqp import commands as pspec

from tests.support.names import uid

TIMEOUT = 5.0


def run(coro, timeout: float = TIMEOUT):
    async def bounded():
        async with asyncio.timeout(timeout):
            return await coro

    return asyncio.run(bounded())


async def ready_count(channel, name: str) -> int:
    """queue.declare passive on the wire (RobustChannel.declare_queue(passive=True) answers from a cache)."""
    underlay = await channel.get_underlay_channel()
    ok = await underlay.queue_declare(name, passive=True)
    return ok.message_count


# -- the basics -------------------------------------------------------------------------------


def test_robust_connect_declare_publish_confirm_consume_ack(node):
    async def main():
        connection = await aio_pika.connect_robust(node.url)
        async with connection:
            assert isinstance(connection, aio_pika.RobustConnection)
            channel = await connection.channel()  # publisher confirms on by default
            await channel.set_qos(prefetch_count=5)
            queue = await channel.declare_queue(uid("aio-q"), auto_delete=True)
            for i in range(20):
                confirmation = await channel.default_exchange.publish(
                    Message(
                        f"m{i}".encode(),
                        message_id=str(i),
                        content_type="text/plain",
                        headers={"i": i},
                        delivery_mode=DeliveryMode.PERSISTENT,
                    ),
                    routing_key=queue.name,
                )
                assert isinstance(confirmation, pspec.Basic.Ack)
            assert await ready_count(channel, queue.name) == 20

            got = []
            async with queue.iterator() as it:
                async for message in it:
                    got.append(
                        (
                            message.body,
                            message.message_id,
                            message.headers["i"],
                            message.redelivered,
                        )
                    )
                    assert message.content_type == "text/plain"
                    assert message.delivery_mode == DeliveryMode.PERSISTENT
                    await message.ack()
                    if len(got) == 20:
                        break
                # Acks were sent before this declare on the same channel, so they are applied.
                assert await ready_count(channel, queue.name) == 0
            assert got == [(f"m{i}".encode(), str(i), i, False) for i in range(20)]
            # The iterator cancelled the last consumer of an auto-delete queue: it is gone.
            with pytest.raises(aiormq.exceptions.ChannelNotFoundEntity):
                await ready_count(await connection.channel(), queue.name)

    run(main())


def test_process_context_manager_acks(node):
    async def main():
        async with await aio_pika.connect_robust(node.url) as connection:
            channel = await connection.channel()
            queue = await channel.declare_queue(uid("aio-q"), exclusive=True)
            await channel.default_exchange.publish(Message(b"ok"), routing_key=queue.name)
            await channel.default_exchange.publish(Message(b"boom"), routing_key=queue.name)
            async with queue.iterator() as it:
                seen = []
                async for message in it:
                    try:
                        async with message.process(requeue=True):
                            seen.append((message.body, message.redelivered))
                            if message.body == b"boom" and not message.redelivered:
                                raise RuntimeError("handler failed")
                    except RuntimeError:
                        pass
                    if len(seen) == 3:
                        break
            assert seen == [(b"ok", False), (b"boom", False), (b"boom", True)]

    run(main())


# -- ack / nack / reject ----------------------------------------------------------------------


def test_nack_reject_requeue_and_redelivered(node):
    async def main():
        async with await aio_pika.connect_robust(node.url) as connection:
            channel = await connection.channel()
            queue = await channel.declare_queue(uid("aio-q"), exclusive=True)
            for body in (b"nack-requeue", b"reject-requeue", b"nack-drop", b"reject-drop", b"ack"):
                await channel.default_exchange.publish(Message(body), routing_key=queue.name)

            seen = []
            for _ in range(7):
                m = await queue.get(timeout=2)
                seen.append((m.body, m.redelivered))
                if m.redelivered:
                    await m.ack()
                elif m.body == b"nack-requeue":
                    await m.nack(requeue=True)
                elif m.body == b"reject-requeue":
                    await m.reject(requeue=True)
                elif m.body == b"nack-drop":
                    await m.nack(requeue=False)
                elif m.body == b"reject-drop":
                    await m.reject(requeue=False)
                else:
                    await m.ack()
            # Requeued messages come back first (their original position), marked redelivered;
            # dropped ones never come back.
            assert seen == [
                (b"nack-requeue", False),
                (b"nack-requeue", True),
                (b"reject-requeue", False),
                (b"reject-requeue", True),
                (b"nack-drop", False),
                (b"reject-drop", False),
                (b"ack", False),
            ]
            assert await queue.get(fail=False) is None

    run(main())


def test_requeue_goes_back_to_original_position(node):
    async def main():
        async with await aio_pika.connect_robust(node.url) as connection:
            channel = await connection.channel()
            queue = await channel.declare_queue(uid("aio-q"), exclusive=True)
            for body in (b"m1", b"m2", b"m3"):
                await channel.default_exchange.publish(Message(body), routing_key=queue.name)
            m1 = await queue.get()
            assert m1.body == b"m1"
            await m1.nack(requeue=True)
            order = []
            for _ in range(3):
                m = await queue.get(no_ack=True)
                order.append((m.body, m.redelivered))
            assert order == [(b"m1", True), (b"m2", False), (b"m3", False)]
            with pytest.raises(QueueEmpty):
                await queue.get(no_ack=True)
            assert await queue.get(fail=False) is None

    run(main())


def test_consumer_nack_requeue_then_reject_drop(node):
    async def main():
        async with await aio_pika.connect_robust(node.url) as connection:
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=1)
            queue = await channel.declare_queue(uid("aio-q"), exclusive=True)
            await channel.default_exchange.publish(Message(b"x"), routing_key=queue.name)
            await channel.default_exchange.publish(Message(b"y"), routing_key=queue.name)
            seen = []
            async with queue.iterator() as it:
                async for m in it:
                    seen.append((m.body, m.redelivered))
                    if not m.redelivered and m.body == b"x":
                        await m.nack(requeue=True)
                    elif m.body == b"x":
                        await m.reject(requeue=False)
                    else:
                        await m.ack()
                        break
            assert seen == [(b"x", False), (b"x", True), (b"y", False)]
            assert await ready_count(channel, queue.name) == 0

    run(main())


# -- routing ----------------------------------------------------------------------------------


def test_topic_routing(node):
    async def main():
        async with await aio_pika.connect_robust(node.url) as connection:
            channel = await connection.channel()
            ex = await channel.declare_exchange(
                uid("aio-topic"), ExchangeType.TOPIC, auto_delete=True
            )
            bindings = {
                "all": "#",
                "eu_any_depth": "eu.#",
                "one_word_middle": "*.orders.*",
                "exact": "eu.orders.created",
                "eu_two_words": "eu.*",
            }
            queues = {}
            for label, key in bindings.items():
                q = await channel.declare_queue(uid(f"aio-{label}"), exclusive=True)
                await q.bind(ex, routing_key=key)
                queues[label] = q
            keys = [
                "eu",
                "eu.orders",
                "eu.orders.created",
                "us.orders.created",
                "eu.a.b.c",
                "",
                "us",
            ]
            for key in keys:
                await ex.publish(
                    Message(key.encode() or b"<empty>", message_id=key or "empty"), routing_key=key
                )

            async def drain(q) -> list[str]:
                out = []
                while (m := await q.get(no_ack=True, fail=False)) is not None:
                    out.append(m.routing_key)
                return out

            got = {label: await drain(q) for label, q in queues.items()}
            assert got["all"] == keys
            assert got["eu_any_depth"] == [
                "eu",
                "eu.orders",
                "eu.orders.created",
                "eu.a.b.c",
            ]  # '#' matches zero words
            assert got["one_word_middle"] == ["eu.orders.created", "us.orders.created"]
            assert got["exact"] == ["eu.orders.created"]
            assert got["eu_two_words"] == ["eu.orders"]

    run(main())


def test_headers_and_fanout_routing(node):
    async def main():
        async with await aio_pika.connect_robust(node.url) as connection:
            channel = await connection.channel()
            hx = await channel.declare_exchange(
                uid("aio-headers"), ExchangeType.HEADERS, auto_delete=True
            )
            fx = await channel.declare_exchange(
                uid("aio-fanout"), ExchangeType.FANOUT, auto_delete=True
            )
            q_any = await channel.declare_queue(uid("aio-any"), exclusive=True)
            q_all = await channel.declare_queue(uid("aio-all"), exclusive=True)
            await q_any.bind(hx, arguments={"x-match": "any", "a": "1", "b": "2"})
            await q_all.bind(hx, arguments={"x-match": "all", "a": "1", "b": "2"})
            await fx.bind(hx, arguments={"x-match": "all", "fan": "yes"})  # exchange-to-exchange
            q_fan = await channel.declare_queue(uid("aio-fan"), exclusive=True)
            await q_fan.bind(fx)
            await hx.publish(Message(b"a", headers={"a": "1"}), routing_key="")
            await hx.publish(Message(b"ab", headers={"a": "1", "b": "2"}), routing_key="")
            await hx.publish(Message(b"fan", headers={"fan": "yes"}), routing_key="")

            async def bodies(q):
                out = []
                while (m := await q.get(no_ack=True, fail=False)) is not None:
                    out.append(m.body)
                return out

            assert await bodies(q_any) == [b"a", b"ab"]
            assert await bodies(q_all) == [b"ab"]
            assert await bodies(q_fan) == [b"fan"]

    run(main())


# -- returns and errors -----------------------------------------------------------------------


def test_mandatory_unroutable_raises_publish_error(node):
    async def main():
        async with await aio_pika.connect_robust(node.url) as connection:
            channel = await connection.channel(on_return_raises=True)
            with pytest.raises(PublishError) as ei:
                await channel.default_exchange.publish(
                    Message(b"lost", message_id=uid("mid")),
                    routing_key=uid("nobody"),
                    mandatory=True,
                )
            assert ei.value.frame.reply_code == 312
            # The channel stays usable.
            q = await channel.declare_queue(exclusive=True)
            await channel.default_exchange.publish(
                Message(b"ok"), routing_key=q.name, mandatory=True
            )

    run(main())


def test_mandatory_return_callback(node):
    async def main():
        async with await aio_pika.connect_robust(node.url) as connection:
            channel = await connection.channel()
            returned = asyncio.get_running_loop().create_future()
            channel.return_callbacks.add(
                lambda ch, message: returned.done() or returned.set_result(message)
            )
            await channel.default_exchange.publish(
                Message(b"back", message_id=uid("mid")), routing_key=uid("nobody"), mandatory=True
            )
            message = await returned
            assert message.body == b"back"

    run(main())


def test_passive_declare_missing_queue_404_and_channel_reopens(node):
    async def main():
        async with await aio_pika.connect_robust(node.url) as connection:
            channel = await connection.channel()
            with pytest.raises(ChannelClosed) as ei:
                await channel.declare_queue(uid("missing"), passive=True)
            assert isinstance(ei.value, aiormq.exceptions.ChannelNotFoundEntity)
            ch2 = await connection.channel()
            q = await ch2.declare_queue(exclusive=True)
            assert await ready_count(ch2, q.name) == 0


def test_server_named_queue(node):
    async def main():
        async with await aio_pika.connect(
            node.url
        ) as connection:  # a robust channel names queues itself
            channel = await connection.channel()
            q = await channel.declare_queue(exclusive=True)
            assert q.name.startswith("amq.gen-")
            await channel.default_exchange.publish(Message(b"x"), routing_key=q.name)
            assert (await q.get(no_ack=True)).body == b"x"

    run(main())


def test_exclusive_queue_locked_for_other_connection(node):
    async def main():
        async with (
            await aio_pika.connect_robust(node.url) as owner,
            await aio_pika.connect(node.url) as other,
        ):
            q = await (await owner.channel()).declare_queue(uid("aio-excl"), exclusive=True)
            ch = await other.channel()
            with pytest.raises(aiormq.exceptions.ChannelLockedResource):
                await ch.declare_queue(q.name, passive=True)

    run(main())


def test_wrong_password_refused(node):
    async def main():
        with pytest.raises((aiormq.exceptions.ProbableAuthenticationError, ConnectionError)) as ei:
            await aio_pika.connect(f"amqp://guest:nope@127.0.0.1:{node.port}/")
        assert "ACCESS_REFUSED" in str(ei.value) or "403" in str(ei.value)

    run(main())


# -- prefetch and redelivery across connections -----------------------------------------------


def test_prefetch_then_release_on_connection_close(node):
    async def main():
        publisher = await aio_pika.connect_robust(node.url)
        consumer = await aio_pika.connect(node.url)
        async with publisher:
            pch = await publisher.channel()
            queue = await pch.declare_queue(uid("aio-q"), auto_delete=False)
            for i in range(5):
                await pch.default_exchange.publish(
                    Message(f"m{i}".encode()), routing_key=queue.name
                )
            cch = await consumer.channel()
            await cch.set_qos(prefetch_count=2)
            cq = await cch.get_queue(queue.name)
            got = []
            done = asyncio.Event()

            async def on_message(message):
                got.append(message.body)
                if len(got) == 2:
                    done.set()

            await cq.consume(on_message)
            await done.wait()
            # A round trip on the consumer's connection: every delivery the node will make is in.
            check = await cch.declare_queue(queue.name, passive=True)
            assert check.declaration_result.message_count == 3
            assert got == [b"m0", b"m1"]
            await consumer.close()  # unacked m0, m1 go back to the head of the queue

            order = []
            for _ in range(5):
                m = await queue.get(no_ack=True)
                order.append((m.body, m.redelivered))
            assert order == [
                (b"m0", True),
                (b"m1", True),
                (b"m2", False),
                (b"m3", False),
                (b"m4", False),
            ]
            await queue.delete()

    run(main())


# -- robust reconnection ----------------------------------------------------------------------


def test_robust_connection_recovers_after_node_restart(make_node):
    n = make_node()

    async def main():
        connection = await aio_pika.connect_robust(n.url, reconnect_interval=0.2)
        async with connection:
            channel = await connection.channel()
            ex = await channel.declare_exchange(uid("aio-rx"), ExchangeType.TOPIC, durable=True)
            queue = await channel.declare_queue(uid("aio-rq"), durable=True)
            await queue.bind(ex, "k.#")
            received: asyncio.Queue = asyncio.Queue()

            async def on_message(message):
                await received.put(message.body)
                await message.ack()

            await queue.consume(on_message)
            await ex.publish(Message(b"before"), routing_key="k.1")
            assert await received.get() == b"before"

            reconnected = asyncio.Event()
            connection.reconnect_callbacks.add(lambda *a: reconnected.set())
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, n.stop)
            await loop.run_in_executor(None, n.start)
            await reconnected.wait()
            # Exchange, queue, binding and consumer were restored by the client.
            await ex.publish(Message(b"after"), routing_key="k.2")
            assert await received.get() == b"after"

    run(main(), timeout=15.0)
