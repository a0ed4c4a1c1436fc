"""Many busy queues at once: Merpati (`merpati server --workers N`) against RabbitMQ (a figure,
not a test).

Q queues, each with its own amqp-loadgen process (1 producer and 1 consumer, at-least-once:
confirms and manual acks, 100 B bodies), all started together; the figure is the sum of their
consume rates, and the brokers alternate round by round so that the machine's drift falls on
both. With --rate R every producer is held to R msg/s and the figure is the latency (p50 and
p99 of the medians over the queues), not the throughput.

    python -m bench.multi_queue --loadgen /path/to/amqp-loadgen [--queues 16] [--workers auto]
        [--reps 3] [--duration 10] [--rate 0] [--brokers merpati,rabbitmq]
        [--declare first|loadgen]

--brokers takes merpati:N for `--workers N` (e.g. merpati:1,merpati:2,rabbitmq).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.rabbitmq import RabbitCluster
from bench.rawclient import RawClient
from tests.support.node import free_port


class MerpatiWorkers:
    """`merpati server --workers N` as a process of its own, on free ports."""

    def __init__(self, workers: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="merpati-bench-"))
        self.port = free_port()
        self.log = (self.dir / "server.log").open("w")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "merpati.node",
                "server",
                "--workers",
                workers,
                "--data-dir",
                str(self.dir / "data"),
                "--amqp-port",
                str(self.port),
                "--management-port",
                str(free_port()),
                "--metrics-port",
                "0",
                "--cluster-port",
                "27100",  # below the ephemeral range: no self-connect clash (README)
                "--bind",
                "127.0.0.1",
                "--log-level",
                "warning",
            ],  # fmt: skip
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self._wait_ready()

    def _wait_ready(self, timeout: float = 60.0) -> None:
        import socket

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError((self.dir / "server.log").read_text()[-2000:])
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    time.sleep(3.0)  # every worker listening, the cluster formed
                    return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError("merpati --workers did not start")

    def pids(self) -> list[int]:
        out = subprocess.run(
            ["pgrep", "-f", "--", f"--data-dir {self.dir}/data"], capture_output=True, text=True
        ).stdout
        return [int(p) for p in out.split()]

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


async def _declare(port: int, names: list[str]) -> None:
    c = await RawClient.open(port)
    for name in names:
        await c.call("queue.declare", queue=name)
    c.close()


def run_round(
    loadgen: str,
    port: int,
    pids: list[int],
    queues: int,
    duration: int,
    rate: int,
    tag: str,
    declare: str = "first",
) -> dict[str, Any]:
    if declare == "first":
        asyncio.run(_declare(port, [f"mq-{tag}-{i}" for i in range(queues)]))
    procs = []
    for i in range(queues):
        cmd = [
            loadgen, "-p", str(port), "-q", f"mq-{tag}-{i}", "-m", "at-least-once",
            "-s", "100", "-d", str(duration), "--delete-queue",
        ]  # fmt: skip
        if declare == "first":
            cmd.append("--no-declare")
        if rate:
            cmd += ["-r", str(rate)]
        for pid in pids[:1] if i else pids:  # the broker's CPU, reported once
            cmd += ["--broker-pid", str(pid)]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    results = []
    for p in procs:
        out, err = p.communicate(timeout=duration + 120)
        if p.returncode != 0:
            raise RuntimeError(f"loadgen failed: {err.decode()[-500:]}")
        results.append(json.loads(out.decode().strip().splitlines()[-1]))
    return {
        "recv_rate": sum(r["recv_rate"] for r in results),
        "pub_rate": sum(r["pub_rate"] for r in results),
        "p50_us": statistics.median(r["lat_us"]["p50"] for r in results),
        "p99_us": statistics.median(r["lat_us"]["p99"] for r in results),
        "worst_p99_us": max(r["lat_us"]["p99"] for r in results),
        "broker_cpu_pct": results[0]["cpu_pct"]["broker"],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--loadgen", default=os.environ.get("AMQP_LOADGEN", "amqp-loadgen"))
    ap.add_argument("--queues", type=int, default=16)
    ap.add_argument("--workers", default="auto")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--rate", type=int, default=0)
    ap.add_argument("--brokers", default="merpati,rabbitmq")
    ap.add_argument(
        "--declare",
        choices=("first", "loadgen"),
        default="first",
        help="first: all queues from one connection before the round (with client-local "
        "placement, all on one worker); loadgen: each loadgen declares its own queue",
    )
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    kinds = args.brokers.split(",")
    figures: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
    for rep in range(args.reps):
        for kind in kinds:
            if kind.startswith("merpati"):
                # merpati:N runs with --workers N (several in one run compare worker counts).
                broker: Any = MerpatiWorkers(kind.partition(":")[2] or args.workers)
                port, pids = broker.port, broker.pids()
            else:
                broker = RabbitCluster(1).start()
                port, pids = broker.port(0), broker.pids()
            try:
                r = run_round(
                    args.loadgen,
                    port,
                    pids,
                    args.queues,
                    args.duration,
                    args.rate,
                    f"{rep}",
                    args.declare,
                )
            finally:
                broker.stop()
            r |= {
                "broker": kind,
                "rep": rep,
                "queues": args.queues,
                "rate": args.rate,
                "declare": args.declare,
            }
            figures[kind].append(r)
            print(json.dumps(r), flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps(r) + "\n")
    for kind, rs in figures.items():
        print(
            f"{kind}: consume {statistics.median(r['recv_rate'] for r in rs):,.0f} msg/s, "
            f"p50 {statistics.median(r['p50_us'] for r in rs) / 1000:.2f} ms, "
            f"p99 {statistics.median(r['p99_us'] for r in rs) / 1000:.2f} ms "
            f"(medians of {len(rs)} rounds)"
        )


if __name__ == "__main__":
    main()
