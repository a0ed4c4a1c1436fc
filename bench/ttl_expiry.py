"""TTL expiry precision and cost (figures, not a test).

Starts a node, publishes N messages with staggered per-message TTLs into a queue that dead-letters
to a second queue, samples the queue's depth to see how far expiry lags behind the deadlines, and
prints the node's CPU use while it waits for them and while they expire.

    python -m bench.ttl_expiry [--messages 100000] [--spread 10]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import pika


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--spread", type=float, default=10.0, help="seconds over which deadlines fall")
    ap.add_argument(
        "--lead", type=float, default=25.0, help="seconds from start to the first deadline"
    )
    args = ap.parse_args()

    port = free_port()
    data = tempfile.mkdtemp(prefix="merpati-ttl-")
    node = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "merpati.node",
            "server",
            "--amqp-port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--raft-port",
            str(free_port()),
            "--metrics-port",
            "0",
            "--management-port",
            "0",
            "--data-dir",
            data,
            "--log-level",
            "warning",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        for _ in range(100):
            try:
                conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port))
                break
            except pika.exceptions.AMQPConnectionError:
                time.sleep(0.1)
        ch = conn.channel()
        ch.exchange_declare("ttl-dlx", "fanout")
        ch.queue_declare("ttl-dlq")
        ch.queue_bind("ttl-dlq", "ttl-dlx")
        ch.queue_declare("ttl-work", arguments={"x-dead-letter-exchange": "ttl-dlx"})
        first = time.time() + args.lead
        n = args.messages
        deadlines = []
        t0 = time.time()
        for i in range(n):
            # Deadlines interleave (not in publish order), so most expire away from the head.
            deadline = first + ((i * 7919) % n) / n * args.spread
            ttl_ms = int((deadline - time.time()) * 1000)
            deadlines.append(time.time() + ttl_ms / 1000)
            ch.basic_publish(
                "", "ttl-work", b"x" * 100, pika.BasicProperties(expiration=str(ttl_ms))
            )
        publish_s = time.time() - t0
        deadlines.sort()
        if time.time() > first - 3:
            print("publishing took too long for the lead time; raise --lead", file=sys.stderr)
        # CPU while waiting for the first deadline (nothing should run).
        idle_wait = max(0.0, first - time.time() - 1.0)
        c0 = cpu_seconds(node.pid)
        time.sleep(idle_wait)
        idle_cpu = cpu_seconds(node.pid) - c0
        # Sample the work queue's depth: at time t, the oldest deadline not yet served says how
        # late expiry runs (resolution: the sampling period plus one round trip).
        lags: list[float] = []
        c1 = cpu_seconds(node.pid)
        e0 = time.time()
        while True:
            t = time.time()
            remaining = ch.queue_declare("ttl-work", passive=True).method.message_count
            gone = n - remaining
            if gone >= n:
                break
            lags.append(max(0.0, t - deadlines[gone]))
            if t > first + args.spread + 60:
                break
            time.sleep(0.01)
        expiry_cpu = cpu_seconds(node.pid) - c1
        expiry_wall = time.time() - e0
        dead_lettered = ch.queue_declare("ttl-dlq", passive=True).method.message_count
        lags.sort()

        def pct(p: float) -> float:
            return lags[min(len(lags) - 1, int(p * len(lags)))] * 1000

        print(
            f"{n} messages, deadlines interleaved over {args.spread:.0f} s, published in {publish_s:.1f} s"
        )
        print(f"expired: {n - remaining}, dead-lettered to the DLQ: {dead_lettered}")
        print(
            f"expiry lag behind the deadline, sampled every ~10 ms ({len(lags)} samples): "
            f"median {statistics.median(lags) * 1000:.1f} ms  p99 {pct(0.99):.1f} ms  max {lags[-1] * 1000:.1f} ms"
        )
        print(
            f"node CPU while waiting {idle_wait:.1f} s before the first deadline: {idle_cpu:.2f} s "
            f"({idle_cpu / max(idle_wait, 1e-9) * 100:.1f}%)"
        )
        print(
            f"node CPU during the expiry window ({expiry_wall:.1f} s): {expiry_cpu:.2f} s "
            f"({expiry_cpu / n * 1e6:.0f} us per expired + dead-lettered message)"
        )
        conn.close()
    finally:
        node.terminate()
        node.wait(10)


if __name__ == "__main__":
    main()
