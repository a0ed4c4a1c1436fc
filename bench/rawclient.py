"""A bare asyncio AMQP 0-9-1 client for the scale benchmarks (not a general client).

It builds frames with Merpati's codec and reads only what it needs (frame type, channel, the
method's class and id), so that tens of thousands of connections, declarations or deliveries
cost the benchmark little next to the broker it measures, whichever broker that is.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any

from merpati.node.amqp091 import spec
from merpati.node.amqp091.render import content_frames, method_frame

HEADER = b"AMQP\x00\x00\x09\x01"
DELIVER = (60, 60)
FRAME_MAX = 131072


class RawClient:
    """One connection with channel 1 open."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.delivered = 0

    @classmethod
    async def open(
        cls, port: int, host: str = "127.0.0.1", user: str = "guest", password: str = "guest"
    ) -> RawClient:
        reader, writer = await asyncio.open_connection(host, port, limit=1 << 22)
        c = cls(reader, writer)
        writer.write(HEADER)
        await c.read_frame()  # connection.start
        writer.write(
            method_frame(
                0,
                spec.BY_NAME["connection.start-ok"](
                    client_properties={},
                    mechanism="PLAIN",
                    response=b"\x00" + user.encode() + b"\x00" + password.encode(),
                    locale="en_US",
                ),
            )
        )
        await c.read_frame()  # connection.tune
        writer.write(
            method_frame(
                0,
                spec.BY_NAME["connection.tune-ok"](
                    channel_max=16, frame_max=FRAME_MAX, heartbeat=0
                ),
            )
            + method_frame(0, spec.BY_NAME["connection.open"](virtual_host="/"))
            + method_frame(1, spec.BY_NAME["channel.open"]())
        )
        await c.read_frame()  # connection.open-ok
        await c.read_frame()  # channel.open-ok
        return c

    async def read_frame(self) -> tuple[int, int, bytes]:
        head = await self.reader.readexactly(7)
        ftype, channel, size = struct.unpack(">BHI", head)
        payload = await self.reader.readexactly(size + 1)
        return ftype, channel, payload[:-1]

    async def call(self, name: str, **fields: Any) -> tuple[int, int]:
        """Send a synchronous method on channel 1 and wait for its answer (class id, method id);
        a channel or connection close is raised."""
        self.writer.write(method_frame(1, spec.BY_NAME[name](**fields)))
        while True:
            ftype, _ch, payload = await self.read_frame()
            if ftype != 1:
                continue
            ids = struct.unpack_from(">HH", payload)
            if ids in ((20, 40), (10, 50)):
                raise RuntimeError(f"{name} refused: {payload[4:80]!r}")
            if ids == DELIVER:
                self.delivered += 1
                continue
            return ids

    def publish(self, exchange: str, routing_key: str, body: bytes) -> None:
        self.writer.write(
            method_frame(
                1, spec.BY_NAME["basic.publish"](exchange=exchange, routing_key=routing_key)
            )
            + b"".join(content_frames(1, b"\x00\x00", body, FRAME_MAX))
        )

    async def drain(self) -> None:
        await self.writer.drain()

    async def count_deliveries(self, until: int, timeout: float) -> int:
        """Read until `until` basic.deliver frames arrived in all (or the timeout passed). Reads
        in large chunks and walks the frames in place: the client must outpace the broker."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        buf = b""
        unpack = struct.unpack_from
        while self.delivered < until:
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                chunk = await asyncio.wait_for(self.reader.read(1 << 20), left)
            except TimeoutError:
                break
            if not chunk:
                break
            buf += chunk
            pos, end = 0, len(buf)
            while end - pos >= 7:
                ftype, _ch, size = unpack(">BHI", buf, pos)
                if end - pos < size + 8:
                    break
                if ftype == 1 and buf[pos + 7 : pos + 11] == b"\x00\x3c\x00\x3c":
                    self.delivered += 1
                pos += size + 8
            buf = buf[pos:]
        return self.delivered

    async def drain_acking(
        self, queue: str, n: int, prefetch: int = 2000, timeout: float = 3600
    ) -> int:
        """Consume `n` messages from `queue` with manual acks (one multiple ack per half
        prefetch, as an at-least-once consumer does); returns how many arrived in time."""
        await self.call("basic.qos", prefetch_count=prefetch)
        await self.call("basic.consume", queue=queue, consumer_tag="drain")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        buf = b""
        got = acked = last_tag = 0
        unpack = struct.unpack_from
        every = max(1, prefetch // 2)
        while got < n and loop.time() < deadline:
            try:
                chunk = await asyncio.wait_for(self.reader.read(1 << 20), deadline - loop.time())
            except TimeoutError:
                break
            if not chunk:
                break
            buf += chunk
            pos, end = 0, len(buf)
            while end - pos >= 7:
                ftype, _ch, size = unpack(">BHI", buf, pos)
                if end - pos < size + 8:
                    break
                if ftype == 1 and buf[pos + 7 : pos + 11] == b"\x00\x3c\x00\x3c":
                    tag_at = pos + 11 + 1 + buf[pos + 11]  # after the consumer tag
                    (last_tag,) = unpack(">Q", buf, tag_at)
                    got += 1
                pos += size + 8
            buf = buf[pos:]
            if got - acked >= every or got >= n:
                self.writer.write(
                    method_frame(1, spec.BY_NAME["basic.ack"](delivery_tag=last_tag, multiple=True))
                )
                acked = got
        return got

    def close(self) -> None:
        self.writer.close()
