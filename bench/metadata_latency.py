"""Metadata commit latency through RaftLog on one node: prints propose→applied figures (not a test).

Each command is proposed and awaited before the next (one client declaring queues), so this is the
latency a queue.declare pays for Raft, from `propose()` to the future resolving on the loop (the
loop-side state has applied it and listeners have run by then).

    python -m bench.metadata_latency [--n 300] [--gap-ms 0] [--configs stock,tuned-nofsync,tuned]

configs: stock = pysyncobj's default timing and journal (batching on, 50 ms tick, no wake-up on
submit, no fsync); tuned-nofsync = RaftLog's tuning without fsync; tuned = RaftLog's defaults
(tuning + msync of each journal record).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import socket
import statistics
import tempfile
import time

from merpati.cluster.raft_log import RaftLog
from merpati.node.metadata import commands as c

CONFIGS = {
    "stock": {"tuned": False, "fsync": False},
    "stock-fsync": {"tuned": False, "fsync": True},
    "tuned-nofsync": {"tuned": True, "fsync": False},
    "tuned": {"tuned": True, "fsync": True},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def run(name: str, n: int, gap_ms: float) -> None:
    with tempfile.TemporaryDirectory(prefix="merpati-bench-") as d:
        log = RaftLog(d, f"127.0.0.1:{free_port()}", **CONFIGS[name])
        t0 = time.perf_counter()
        await log.start(timeout=10)
        started = time.perf_counter() - t0
        await log.propose(c.AddVhost("/"))
        samples = []
        for i in range(n):
            cmd = c.DeclareQueue("/", f"q{i}", durable=True, leader="bench")
            if gap_ms:
                # A random pause puts each command at a random phase of the raft thread's tick,
                # as commands from real clients are; back to back, they ride the previous tick.
                await asyncio.sleep(random.uniform(0, gap_ms) / 1000)
            t = time.perf_counter()
            await log.propose(cmd)
            samples.append(time.perf_counter() - t)
        log.stop()
    samples.sort()
    ms = [s * 1000 for s in samples]
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    print(
        f"{name:14} n={n:5}  median {statistics.median(ms):8.3f} ms  p99 {p99:8.3f} ms  "
        f"max {ms[-1]:8.3f} ms  mean {statistics.fmean(ms):8.3f} ms  (start {started * 1000:.0f} ms)"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--configs", default="stock,tuned-nofsync,tuned")
    ap.add_argument("--gap-ms", type=float, default=0.0, help="random pause before each command")
    args = ap.parse_args()
    for name in args.configs.split(","):
        asyncio.run(run(name, args.n, args.gap_ms))


if __name__ == "__main__":
    main()
