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
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from tests.cluster.conftest import start_cluster
from tests.support.http import call, q

RMQ_AMQP = 5701  # the three RabbitMQ nodes: AMQP 5701-5703, distribution 25801-25803
RMQ_DIST = 25801


class RabbitCluster:
    def __init__(self, size: int = 3) -> None:
        self.host = socket.gethostname().split(".")[0]
        self.base = Path(tempfile.mkdtemp(prefix="rmq-bench-"))
        self.names = [f"bench{i + 1}@{self.host}" for i in range(size)]

    def _env(self, i: int) -> dict[str, str]:
        d = self.base / str(i)
        return {
            **os.environ,
            "RABBITMQ_NODENAME": self.names[i],
            "RABBITMQ_NODE_PORT": str(RMQ_AMQP + i),
            "RABBITMQ_DIST_PORT": str(RMQ_DIST + i),
            "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
            "RABBITMQ_LOG_BASE": str(d / "log"),
            "RABBITMQ_PID_FILE": str(d / "pid"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
        }

    def ctl(self, i: int, *args: str) -> str:
        out = subprocess.run(
            ["rabbitmqctl", "-n", self.names[i], *args],
            env=self._env(i),
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout

    def start(self) -> RabbitCluster:
        for i in range(len(self.names)):
            (self.base / str(i)).mkdir(parents=True)
            (self.base / str(i) / "enabled_plugins").write_text("[].\n")
        # Debian's rabbitmq-server and rabbitmqctl run as the user rabbitmq.
        subprocess.run(["chown", "-R", "rabbitmq:rabbitmq", str(self.base)], check=True)
        for i in range(len(self.names)):
            subprocess.run(["rabbitmq-server", "-detached"], env=self._env(i), check=True)
        for i in range(len(self.names)):
            pidfile = str(self.base / str(i) / "pid")
            self.ctl(i, "wait", pidfile, "--timeout", "120")
        for i in range(1, len(self.names)):
            self.ctl(i, "stop_app")
            self.ctl(i, "join_cluster", self.names[0])
            self.ctl(i, "start_app")
        return self

    def pids(self) -> list[int]:
        return [int((self.base / str(i) / "pid").read_text()) for i in range(len(self.names))]

    def stop(self) -> None:
        for i in range(len(self.names)):
            subprocess.run(
                ["rabbitmqctl", "-n", self.names[i], "stop"],
                env=self._env(i),
                capture_output=True,
            )
        shutil.rmtree(self.base, ignore_errors=True)


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
                    port, pids = RMQ_AMQP, rabbit.pids()
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
