"""A 3-replica quorum queue: Merpati's against RabbitMQ's, on the same machine (not a test).

Three Merpati nodes (tests' cluster helper) and three RabbitMQ nodes (Debian's rabbitmq-server,
each with its own RABBITMQ_NODENAME, ports and data dir, joined with `rabbitmqctl join_cluster`)
run side by side; one producer and one consumer (persistent, confirms window 1000, prefetch
1000, 100 B) on a quorum queue, connected to the node that leads it. The two brokers alternate,
REPS times each, and the medians and their ratio are printed. The load generator is the neutral
C one (AMQP_LOADGEN, or --loadgen).

    python -m bench.quorum_vs_rabbitmq --loadgen /path/to/amqp-loadgen [--reps 3] [--duration 8]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time

from bench.rabbitmq import RabbitCluster
from tests.cluster.conftest import start_cluster
from tests.support.http import call, q


def run(loadgen: str, port: int, queue: str, duration: int, pids: list[int]) -> dict:
    args = [loadgen, "-p", str(port), "-d", str(duration), "-m", "persistent", "-q", queue]
    args += ["--durable", "--queue-arg", "x-queue-type=quorum"]
    for pid in pids:
        args += ["--broker-pid", str(pid)]
    out = subprocess.run(args, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--loadgen", default=os.environ.get("AMQP_LOADGEN", "amqp-loadgen"))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--duration", type=int, default=8)
    args = ap.parse_args()
    rabbit = RabbitCluster().start()
    cluster = start_cluster()
    try:
        n1 = cluster["n1"]
        rates: dict[str, list[float]] = {"rabbitmq": [], "merpati": []}
        cpu: dict[str, list[float]] = {"rabbitmq": [], "merpati": []}
        for rep in range(args.reps):
            for kind in ("rabbitmq", "merpati"):
                name = f"bench-qq-{rep}"
                if kind == "merpati":
                    status, _ = call(
                        n1.management_url,
                        "PUT",
                        f"/api/queues/%2F/{q(name)}",
                        {"durable": True, "arguments": {"x-queue-type": "quorum"}},
                    )
                    assert status in (201, 204), status
                    info = call(n1.management_url, "GET", f"/api/queues/%2F/{q(name)}")[1]
                    assert len(info["members"]) == 3, info
                    port = cluster[info["leader"]].port
                    pids = [n.proc.pid for n in cluster.nodes.values()]
                else:
                    # Declared through the first node, which then leads it (client-local).
                    port, pids = rabbit.port(0), rabbit.pids()
                r = run(args.loadgen, port, name, args.duration, pids)
                if kind == "rabbitmq" and rep == 0:
                    # The run's queue: a quorum queue with a member on each of the three nodes.
                    listed = rabbit.ctl(0, "list_queues", "name", "type", "members", "leader")
                    row = next(line for line in listed.splitlines() if line.startswith(name))
                    assert "quorum" in row and all(n in row for n in rabbit.names), listed
                    print(f"rabbitmq queue: {row}", flush=True)
                rates[kind].append(r["recv_rate"])
                # Broker CPU (the three nodes together) per message consumed, in µs.
                c = r["cpu_pct"]
                per_msg = c["broker"] / 100 * c["window_s"] / max(1, r["consumed"]) * 1e6
                cpu[kind].append(per_msg)
                print(
                    f"{kind:9} rep {rep}: {r['recv_rate']:9.0f} msg/s, "
                    f"p99 {r['lat_us']['p99'] / 1000:.1f} ms, broker CPU {per_msg:.0f} µs/msg",
                    flush=True,
                )
                time.sleep(1)
        med = {k: statistics.median(v) for k, v in rates.items()}
        print(
            f"median consume rate: merpati {med['merpati']:.0f} msg/s, "
            f"rabbitmq {med['rabbitmq']:.0f} msg/s, ratio {med['merpati'] / med['rabbitmq']:.2f}"
        )
        for k, v in cpu.items():
            print(f"{k}: broker CPU per message (3 nodes) {statistics.median(v):.0f} µs")
    finally:
        cluster.stop()
        cluster.discard()
        rabbit.stop()


if __name__ == "__main__":
    main()
