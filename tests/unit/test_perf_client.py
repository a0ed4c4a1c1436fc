"""merpati perf's client parser: acks cover only deliveries read whole, so a delivery split over
two reads is never acked twice (the broker closes the channel on an unknown delivery tag)."""

from __future__ import annotations

import asyncio
import struct

from merpati.node.amqp091.render import deliver
from merpati.tools.perf import Client, Stats


class Transport:
    def __init__(self) -> None:
        self.acked: list[int] = []

    def is_closing(self) -> bool:
        return False

    def write(self, data: bytes) -> None:
        # basic.ack: frame head (7), class/method (4), delivery tag (8), flags, frame end
        assert data[7:11] == b"\x00\x3c\x00\x50"
        self.acked.append(struct.unpack(">Q", data[11:19])[0])


def test_a_delivery_split_over_two_reads_is_acked_once() -> None:
    async def run() -> list[int]:
        client = Client(Stats())
        transport = Transport()
        client.connection_made(transport)  # type: ignore[arg-type]
        route = b"\x00\x01q"
        first = deliver(1, b"\x01c", 1, False, route, b"\x00\x00", b"x" * 5000, 131072)
        second = deliver(1, b"\x01c", 2, False, route, b"\x00\x00", b"y" * 5000, 131072)
        cut = len(second) - 100  # the read ends inside the second delivery's body
        client.data_received(first + second[:cut])
        client.data_received(second[cut:])
        return transport.acked

    acked = asyncio.run(run())
    assert acked == [1, 2], acked
