"""Metadata commit latency of a three-member Raft with and without mutual TLS (not a test).

Three RaftLogs on loopback in one process (each with its own raft thread), every command
proposed on the leader and awaited before the next (one client declaring queues), so this is
the latency a queue.declare pays for replicating the metadata to a majority; the plain and TLS
rounds alternate, so the machine's drift falls on both.

    python -m bench.raft_tls_latency [--n 500] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from merpati.cluster.raft_log import RaftLog
from merpati.cluster.raft_tls import RaftTls
from merpati.node.metadata import commands as c
from tests.support.certs import CA
from tests.support.node import free_port


async def one_round(tls_dir: Path | None, n: int) -> list[float]:
    ports = [free_port() for _ in range(3)]
    addrs = [f"127.0.0.1:{p}" for p in ports]
    with tempfile.TemporaryDirectory() as tmp:
        logs = []
        for i, addr in enumerate(addrs):
            tls = None
            if tls_dir is not None:
                tls = RaftTls(
                    str(tls_dir / "node.pem"), str(tls_dir / "node.key"), str(tls_dir / "ca.pem")
                )
            logs.append(RaftLog(Path(tmp) / f"n{i}", addr, partners=addrs, tls=tls, fsync=False))
        await asyncio.gather(*(log.start(15) for log in logs))
        try:
            leader_addr = logs[0].status()["leader"]
            leader = next(log for log in logs if log.self_address == leader_addr)
            await leader.propose(c.AddVhost("/"))
            took = []
            for i in range(n):
                t = time.perf_counter()
                await leader.propose(c.DeclareQueue("/", f"q{i}", leader="n1"))
                took.append((time.perf_counter() - t) * 1000)
            return took
        finally:
            for log in logs:
                log.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        certs = Path(d)
        ca = CA.create("bench CA")
        ca.write(certs / "ca.pem")
        ca.issue("node", certs, "node", server=True)
        results: dict[str, list[float]] = {"plain": [], "tls": []}
        for _ in range(args.rounds):
            for name, tls_dir in (("plain", None), ("tls", certs)):
                took = asyncio.run(one_round(tls_dir, args.n))
                results[name].append(statistics.median(took))
                q = statistics.quantiles(took, n=100)
                print(
                    f"{name:5} median {statistics.median(took):.2f} ms  p99 {q[98]:.2f} ms  "
                    f"({args.n} commands)"
                )
        for name, medians in results.items():
            print(f"{name}: median of round medians {statistics.median(medians):.2f} ms")


if __name__ == "__main__":
    main()
