"""Memory per idle AMQP 0-9-1 connection (not a test).

Starts one node, reads its resident memory, opens N connections that complete the handshake
(connection.open-ok) and one channel each and then stay idle (heartbeats off), reads it again,
closes them. The figure is (RSS after - RSS before) / N. The client is a bare asyncio one, so that
10,000 connections fit in this process; the open-file limit must allow them on both sides.

    python -m bench.idle_connections [--connections 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import struct
import time

from merpati.node.amqp091 import spec
from merpati.node.amqp091.render import method_frame
from tests.support.node import NodeProcess

HEADER = b"AMQP\x00\x00\x09\x01"


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readexactly(7)
    ftype, _ch, size = struct.unpack(">BHI", head)
    payload = await reader.readexactly(size + 1)
    return ftype, payload[:-1]


async def open_one(port: int) -> asyncio.StreamWriter:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(HEADER)
    await read_frame(reader)  # connection.start
    writer.write(
        method_frame(
            0,
            spec.BY_NAME["connection.start-ok"](
                client_properties={},
                mechanism="PLAIN",
                response=b"\x00guest\x00guest",
                locale="en_US",
            ),
        )
    )
    await read_frame(reader)  # connection.tune
    writer.write(
        method_frame(
            0, spec.BY_NAME["connection.tune-ok"](channel_max=16, frame_max=131072, heartbeat=0)
        )
        + method_frame(0, spec.BY_NAME["connection.open"](virtual_host="/"))
        + method_frame(1, spec.BY_NAME["channel.open"]())
    )
    await read_frame(reader)  # connection.open-ok
    await read_frame(reader)  # channel.open-ok
    return writer


async def main(n: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    node = NodeProcess("--heartbeat", "0").start()
    try:
        assert node.proc is not None
        await asyncio.sleep(2.0)
        before = rss(node.proc.pid)
        writers = []
        t0 = time.monotonic()
        for i in range(0, n, 200):
            writers += await asyncio.gather(*(open_one(node.port) for _ in range(min(200, n - i))))
        took = time.monotonic() - t0
        await asyncio.sleep(3.0)
        after = rss(node.proc.pid)
        print(f"{n} idle connections (one channel each) opened in {took:.1f} s")
        print(
            f"node RSS {before / 2**20:.1f} MiB -> {after / 2**20:.1f} MiB: "
            f"{(after - before) / n / 1024:.1f} KiB per connection"
        )
        for w in writers:
            w.close()
    finally:
        node.stop()
        node.discard()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--connections", type=int, default=10000)
    asyncio.run(main(p.parse_args().connections))
