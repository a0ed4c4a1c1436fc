"""Client libraries that depend on RabbitMQ's behaviour where it departs from the letter of the
0-9-1 spec (issue: behave as RabbitMQ does where real clients depend on it)."""

from __future__ import annotations

import asyncio

import pytest

from tests.support.names import uid

amqpstorm = pytest.importorskip("amqpstorm", reason="amqpstorm is not installed")
aiormq = pytest.importorskip("aiormq", reason="aiormq is not installed")


def test_amqpstorm_publishes_bodies_in_frames_of_frame_max_octets(node) -> None:
    """amqpstorm splits a body into payloads of frame_max octets; RabbitMQ accepts them."""
    q = uid("storm")
    body = bytes(range(256)) * 1200  # 307200 octets: three frames of 131072 and the rest
    with amqpstorm.Connection("127.0.0.1", "guest", "guest", port=node.port) as conn:
        ch = conn.channel()
        ch.queue.declare(q)
        ch.confirm_deliveries()
        assert ch.basic.publish(body, q) is True
        msg = ch.basic.get(q, no_ack=True, to_dict=False)
        assert msg is not None and msg.body == body
        ch.queue.delete(q)


def test_aiormq_opens_channel_65535(node) -> None:
    """channel_max bounds how many channels are open, not their numbers (aiormq uses 65535)."""

    async def main() -> None:
        conn = await aiormq.connect(f"amqp://guest:guest@127.0.0.1:{node.port}/")
        try:
            ch = await conn.channel(channel_number=65535)
            ok = await ch.queue_declare(uid("aiormq"), auto_delete=True)
            assert ok.message_count == 0
            await ch.close()
        finally:
            await conn.close()

    asyncio.run(main())


def test_aiormq_passive_declare_of_the_default_exchange_is_refused(node) -> None:
    async def main() -> None:
        conn = await aiormq.connect(f"amqp://guest:guest@127.0.0.1:{node.port}/")
        try:
            ch = await conn.channel()
            with pytest.raises(aiormq.exceptions.ChannelAccessRefused) as info:
                await ch.exchange_declare("", passive=True)
            assert "default exchange" in str(info.value)
        finally:
            await conn.close()

    asyncio.run(main())


def test_py_amqp_deletes_a_queue_it_consumes_from(node) -> None:
    """kombu's py-amqp waits for queue.delete-ok; a basic.cancel before it raised
    ConsumerCancelled there."""
    amqp = pytest.importorskip("amqp", reason="py-amqp (kombu's transport) is not installed")
    q = uid("pyamqp")
    conn = amqp.Connection(f"127.0.0.1:{node.port}", userid="guest", password="guest")
    conn.connect()
    try:
        ch = conn.channel()
        ch.queue_declare(q)
        cancelled = []
        ch.basic_consume(q, callback=lambda m: None, on_cancel=cancelled.append)
        assert ch.queue_delete(q) == 0  # returns: no ConsumerCancelled while it waited
        conn.drain_events(timeout=2)
        assert cancelled, "the consumer's basic.cancel never came"
    finally:
        conn.close()
