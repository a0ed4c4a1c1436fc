"""Quorum queue throughput against a classic durable queue, on three real nodes (not a test).

One producer and one consumer (persistent messages, confirms window 1000, prefetch 1000, 100 B)
connected to the node that leads the queue, so the figure is the cost of replication itself and
not of forwarding. The two kinds alternate, REPS times each; medians are printed. The load
generator is the neutral C one (AMQP_LOADGEN, or --loadgen).

    python -m bench.quorum_throughput --loadgen /path/to/amqp-loadgen [--reps 3] [--duration 8]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
from pathlib import Path

from tests.cluster.conftest import start_cluster
from tests.support.http import call, q


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(loadgen: str, node, queue: str, duration: int, quorum: bool) -> dict:  # noqa: ANN001
    args = [loadgen, "-p", str(node.port), "-d", str(duration), "-m", "persistent", "-q", queue]
    args += ["--durable", "--delete-queue"]
    # The same argument the queue was declared with, or the tool's declare is refused (406).
    args += ["--queue-arg", f"x-queue-type={'quorum' if quorum else 'classic'}"]
    out = subprocess.run(args, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--loadgen", default=os.environ.get("AMQP_LOADGEN", "amqp-loadgen"))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--duration", type=int, default=8)
    args = ap.parse_args()
    cluster = start_cluster()
    try:
        n1 = cluster["n1"]
        rates: dict[str, list[float]] = {"classic": [], "quorum": []}
        p99: dict[str, list[float]] = {"classic": [], "quorum": []}
        # CPU µs per message consumed: on the queue's leader, and on each other node.
        lead_cpu: dict[str, list[float]] = {"classic": [], "quorum": []}
        other_cpu: dict[str, list[float]] = {"classic": [], "quorum": []}
        for rep in range(args.reps):
            for kind in ("classic", "quorum"):
                name = f"bench-{kind}-{rep}"
                # Declared first so the run can go to the node that leads it.
                status, _ = call(
                    n1.management_url,
                    "PUT",
                    f"/api/queues/%2F/{q(name)}",
                    {"durable": True, "arguments": {"x-queue-type": kind}},
                )
                assert status in (201, 204), status
                leader = call(n1.management_url, "GET", f"/api/queues/%2F/{q(name)}")[1]["leader"]
                before = {n: cpu_seconds(node.proc.pid) for n, node in cluster.nodes.items()}
                r = run(args.loadgen, cluster[leader], name, args.duration, kind == "quorum")
                spent = {
                    n: cpu_seconds(node.proc.pid) - before[n] for n, node in cluster.nodes.items()
                }
                per = 1e6 / max(1, r["consumed"])
                lead_cpu[kind].append(spent[leader] * per)
                others = [spent[n] * per for n in spent if n != leader]
                other_cpu[kind].append(sum(others) / len(others))
                rates[kind].append(r["recv_rate"])
                p99[kind].append(r["lat_us"]["p99"] / 1000)
                print(
                    f"{kind:8} rep {rep}: {r['recv_rate']:9.0f} msg/s, p99 {p99[kind][-1]:.1f} ms"
                )
        for kind in rates:
            print(
                f"{kind:8} median {statistics.median(rates[kind]):9.0f} msg/s, "
                f"p99 median {statistics.median(p99[kind]):.1f} ms, CPU per message: leader "
                f"{statistics.median(lead_cpu[kind]):.0f} µs, each other node "
                f"{statistics.median(other_cpu[kind]):.0f} µs"
            )
        print(
            f"quorum/classic: {statistics.median(rates['quorum']) / statistics.median(rates['classic']):.2f}"
        )
    finally:
        cluster.stop()
        cluster.discard()


if __name__ == "__main__":
    main()
