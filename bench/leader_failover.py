"""How long after the Raft leader is killed the cluster accepts declarations again (not a test).

Three real node processes on loopback. Each round: ask a node which node leads Raft, SIGKILL that
node, then declare a new queue through a surviving node over AMQP 0-9-1 (pika), retrying until a
declare-ok comes back; the figure is the time from the kill to that declare-ok. The killed node is
restarted before the next round.

    python -m bench.leader_failover [--rounds 5]
"""

from __future__ import annotations

import argparse
import base64
import json
import signal
import statistics
import time
import urllib.request

import pika

from tests.cluster.conftest import start_cluster


def raft_leader(node) -> str | None:  # noqa: ANN001 - a tests.support NodeProcess
    req = urllib.request.Request(node.management_url + "/api/overview")
    req.add_header("Authorization", "Basic " + base64.b64encode(b"guest:guest").decode())
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.load(r)["merpati_cluster"].get("raft_leader")


def declare_until_ok(port: int, name: str, deadline: float) -> float:
    while time.monotonic() < deadline:
        try:
            conn = pika.BlockingConnection(
                pika.ConnectionParameters(
                    "127.0.0.1", port, socket_timeout=2, blocked_connection_timeout=5
                )
            )
            try:
                conn.channel().queue_declare(name, durable=True)
                return time.monotonic()
            finally:
                conn.close()
        except Exception:  # noqa: BLE001 - refused, closed with 5xx, timed out: try again
            time.sleep(0.05)
    raise TimeoutError("no declaration accepted in time")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    cluster = start_cluster(3)
    figures = []
    try:
        for r in range(args.rounds):
            leader = None
            for _ in range(100):
                leader = raft_leader(cluster["n1"] if cluster["n1"].alive() else cluster["n2"])
                if leader:
                    break
                time.sleep(0.1)
            assert leader, "no Raft leader"
            survivor = next(n for n in cluster.nodes if n != leader)
            killed_at = time.monotonic()
            cluster[leader].stop(sig=signal.SIGKILL)
            ok_at = declare_until_ok(cluster[survivor].port, f"failover-{r}", killed_at + 60)
            figures.append(ok_at - killed_at)
            print(
                f"round {r}: killed leader {leader}, declare accepted via {survivor} after "
                f"{figures[-1]:.2f} s",
                flush=True,
            )
            cluster[leader].start(timeout=60)
    finally:
        cluster.stop()
    print(
        f"median {statistics.median(figures):.2f} s, max {max(figures):.2f} s over {len(figures)} rounds"
    )


if __name__ == "__main__":
    main()
