"""CPU per forwarded message: batched Publish stream vs one message per gRPC write.

    python bench/forwarding.py [--messages 20000] [--size 256] [--burst 100] [--loop uvloop|asyncio]
        [--transport grpc|link]

Two brokers in this process (node a publishes through RemoteQueue to a queue led by node b, over
gRPC on loopback), so the CPU figure covers both ends: a's encoding and writes, b's decoding,
enqueueing and results, a's confirms. --transport link sends the streams over the Unix socket
nodes of one host use (cluster/forwarding/local_link.py) instead of gRPC. Publishes come in bursts of --burst per loop turn, as
they would from client sockets, and each run waits until every confirm is in. Figures, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

from merpati.cluster.cluster_node import ClusterNode  # noqa: E402
from merpati.cluster.membership import Member, Membership  # noqa: E402
from merpati.node.broker import Broker  # noqa: E402
from merpati.node.core.message import Message  # noqa: E402
from merpati.node.metadata import commands as cmds  # noqa: E402
from merpati.node.metadata.log import LocalLog  # noqa: E402
from merpati.node.store import SQLiteStore  # noqa: E402


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _node(
    node_id: str, tmp: str, ports: dict[str, int], batch_messages: int | None, link: bool
) -> tuple[Broker, SQLiteStore, ClusterNode]:
    store = SQLiteStore(Path(tmp) / f"{node_id}.db")
    store.open()
    store.start(asyncio.get_running_loop())
    members = [Member(n, "127.0.0.1", port, 0) for n, port in ports.items()]
    cluster = ClusterNode(Membership(members, node_id), "bench", "127.0.0.1")
    broker = Broker(node_id, LocalLog(), store=store, cluster=cluster)
    if link:
        cluster.link_dir = tmp
    await cluster.start_forwarding(batch_messages)
    return broker, store, cluster


async def _run(
    batch_messages: int | None, n: int, size: int, burst: int, link: bool
) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        ports = {"a": _port(), "b": _port()}
        a, sa, ca = await _node("a", tmp, ports, batch_messages, link)
        b, sb, cb = await _node("b", tmp, ports, batch_messages, link)
        fws = [ca.forwarding, cb.forwarding]
        for broker in (a, b):
            await broker.propose(cmds.AddVhost("/"))
            await broker.propose(cmds.DeclareQueue("/", "q", False, leader="b"))
        while fws[0].peer_state("b") != "up":
            await asyncio.sleep(0.01)
        rq = a.queue("/", "q")
        lq = b.queue("/", "q")
        body = os.urandom(size)
        ledger = sa.ledger
        peer = fws[0].peers["b"]

        async def publish(count: int) -> None:
            last = 0
            sent = 0
            while sent < count:
                for _ in range(min(burst, count - sent)):
                    last = rq.enqueue(Message("", "q", None, b"\x00\x00", body))
                    sent += 1
                await asyncio.sleep(0)
                if peer.congested:
                    while peer.congested:
                        await asyncio.sleep(0.001)
            await ledger.wait(last)

        await publish(min(2000, n))  # warm up
        lq.purge_now()
        writes0, sent0 = peer.writes, peer.messages_sent
        cpu0, wall0 = time.process_time(), time.perf_counter()
        await publish(n)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        writes = peer.writes - writes0
        assert lq.stats_now()[0] == n, lq.stats_now()
        for fw in fws:
            await fw.stop()
        for store in (sa, sb):
            await asyncio.get_running_loop().run_in_executor(None, store.close)
        return {
            "us_cpu_per_msg": cpu / n * 1e6,
            "msgs_per_s": n / wall,
            "msgs_per_write": (peer.messages_sent - sent0) / max(writes, 1),
        }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--messages", type=int, default=20_000)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--burst", type=int, default=100, help="publishes per loop turn")
    p.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    p.add_argument("--transport", choices=("grpc", "link"), default="grpc")
    args = p.parse_args(argv)
    logging.getLogger("merpati.forwarding").setLevel(logging.ERROR)  # peers stopping at the end
    runner = asyncio.run
    if args.loop == "uvloop":
        import uvloop

        runner = uvloop.run
    print(
        f"{args.messages} messages of {args.size} B, bursts of {args.burst} per loop turn, "
        f"{args.loop}, {args.transport}; CPU of both nodes (one process) per message"
    )
    results = {}
    for label, batch in (("batched", None), ("one per write", 1)):
        r = runner(_run(batch, args.messages, args.size, args.burst, args.transport == "link"))
        results[label] = r
        print(
            f"  {label:14s} {r['us_cpu_per_msg']:8.1f} us CPU/msg  {r['msgs_per_s']:9.0f} msg/s  "
            f"{r['msgs_per_write']:7.1f} msgs/write"
        )
    ratio = results["one per write"]["us_cpu_per_msg"] / results["batched"]["us_cpu_per_msg"]
    print(f"  one-per-write costs {ratio:.1f}x the CPU per message of batched")
    return 0


if __name__ == "__main__":
    sys.exit(main())
