"""How a broker's cost grows with the work: curves of memory and time (figures, not tests).

Each scenario runs against a Merpati node this script starts (a fresh data directory) and,
with --rabbitmq, against a RabbitMQ node started the same way (Debian's rabbitmq-server, its
scheduler busy-waiting off so that its CPU time is work, not spinning). Memory is the broker
process's resident set; CPU time is read from /proc, so the figures are the broker's own cost,
whatever the client costs. The client is bench/rawclient.py (frames built once, read barely).

Scenarios (several sizes each, one JSON line per point into --out):

- connections: N idle connections with one channel each; memory per connection.
- queues: N queues declared one after another by one client (each declare waits for its
  declare-ok, as a client does); declare rate per step and memory per queue.
- bindings: N topic bindings (`s<i>.*.e<i mod 10>`, each to one of 100 queues), then 20,000
  messages whose keys each match one binding; broker CPU per routed message, and the rate
  bindings are made at (pipelined 500 at a time).
- fanout: a fanout exchange bound to K queues, one no-ack consumer on each; broker CPU per
  delivered copy.
- deep: one queue filled with N messages of 100 B by amqp-loadgen (at-least-once, publish only),
  then drained by one consumer with manual acks (prefetch 2000): publish and drain rates,
  memory and data on disk when full.

    python -m bench.scale connections queues bindings fanout [--rabbitmq] [--out FILE]
    python -m bench.scale deep --loadgen /path/to/amqp-loadgen --deep-sizes 1000000,10000000
    python -m bench.plot_scale FILE   # the plots in docs/img/
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.rabbitmq import RabbitCluster
from bench.rawclient import RawClient
from tests.support.node import NodeProcess

TICK = os.sysconf("SC_CLK_TCK")


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def disk_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


class Broker:
    """A started broker: kind, AMQP port, the pid whose memory and CPU count, its data dir."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._node: NodeProcess | None = None
        self._rabbit: RabbitCluster | None = None
        if kind == "merpati":
            self._node = NodeProcess("--heartbeat", "0").start()
            assert self._node.proc is not None
            self.port, self.pid = self._node.port, self._node.proc.pid
            self.data = self._node.dir
        else:
            self._rabbit = RabbitCluster(1, erl_args="+sbwt none +sbwtdcpu none +sbwtdio none")
            self._rabbit.start()
            self.port, self.pid = self._rabbit.port(0), self._rabbit.pids()[0]
            self.data = self._rabbit.base
        time.sleep(2.0)  # let start-up allocations settle before the first reading

    def stop(self) -> None:
        if self._node is not None:
            self._node.stop()
            self._node.discard()
        if self._rabbit is not None:
            self._rabbit.stop()


def emit(out: Path, **point: Any) -> None:
    line = json.dumps(point)
    print(line, flush=True)
    with out.open("a") as f:
        f.write(line + "\n")


async def connections(b: Broker, out: Path, sizes: list[int]) -> None:
    base = rss(b.pid)
    clients: list[RawClient] = []
    for n in sizes:
        while len(clients) < n:
            batch = min(200, n - len(clients))
            clients += await asyncio.gather(*(RawClient.open(b.port) for _ in range(batch)))
        await asyncio.sleep(3.0)
        mem = rss(b.pid)
        emit(
            out,
            scenario="connections",
            broker=b.kind,
            n=n,
            rss=mem,
            per_item=(mem - base) / n,
        )
    for c in clients:
        c.close()


async def queues(b: Broker, out: Path, sizes: list[int]) -> None:
    c = await RawClient.open(b.port)
    base = rss(b.pid)
    made = 0
    for n in sizes:
        t = time.perf_counter()
        cpu = cpu_seconds(b.pid)
        step = n - made
        while made < n:
            await c.call("queue.declare", queue=f"scale-q{made}")
            made += 1
        took = time.perf_counter() - t
        cpu = cpu_seconds(b.pid) - cpu
        await asyncio.sleep(2.0)
        mem = rss(b.pid)
        emit(
            out,
            scenario="queues",
            broker=b.kind,
            n=n,
            rss=mem,
            per_item=(mem - base) / n,
            declare_rate=step / took,
            cpu_per_declare_us=cpu / step * 1e6,
        )
    c.close()


async def _pipelined(c: RawClient, name: str, args: list[dict[str, Any]], window: int) -> None:
    for start in range(0, len(args), window):
        part = args[start : start + window]
        for fields in part[:-1]:
            c.writer.write(_method(name, fields))
        await c.call(name, **part[-1])
        # Every answer before the last one is already read by call() or still to read.
        await _read_answers(c, len(part) - 1)


def _method(name: str, fields: dict[str, Any]) -> bytes:
    from merpati.node.amqp091 import spec
    from merpati.node.amqp091.render import method_frame

    return method_frame(1, spec.BY_NAME[name](**fields))


async def _read_answers(c: RawClient, n: int) -> None:
    # call() returned at the first method answer; the rest of the window's answers follow it.
    for _ in range(n):
        ftype, _ch, payload = await c.read_frame()
        while ftype != 1:
            ftype, _ch, payload = await c.read_frame()


async def bindings(b: Broker, out: Path, sizes: list[int], messages: int = 20_000) -> None:
    c = await RawClient.open(b.port)
    await c.call("exchange.declare", exchange="scale.topic", type="topic")
    for i in range(100):
        await c.call("queue.declare", queue=f"scale-b{i}")
    made = 0
    body = b"x" * 100
    for n in sizes:
        t = time.perf_counter()
        step = [
            {
                "queue": f"scale-b{i % 100}",
                "exchange": "scale.topic",
                "routing_key": f"s{i}.*.e{i % 10}",
            }
            for i in range(made, n)
        ]
        await _pipelined(c, "queue.bind", step, 500)
        bind_rate = len(step) / (time.perf_counter() - t)
        made = n
        await asyncio.sleep(1.0)
        mem = rss(b.pid)
        cpu = cpu_seconds(b.pid)
        t = time.perf_counter()
        for k in range(messages):
            i = (k * 7919) % n
            c.publish("scale.topic", f"s{i}.x.e{i % 10}", body)
            if k % 1000 == 999:
                await c.drain()
        await c.call("basic.qos", prefetch_count=0)  # answered once every publish is routed
        took = time.perf_counter() - t
        cpu = cpu_seconds(b.pid) - cpu
        emit(
            out,
            scenario="bindings",
            broker=b.kind,
            n=n,
            rss=mem,
            bind_rate=bind_rate,
            cpu_per_message_us=cpu / messages * 1e6,
            publish_rate=messages / took,
        )
        for i in range(100):
            await c.call("queue.purge", queue=f"scale-b{i}")
    c.close()


async def fanout(b: Broker, out: Path, sizes: list[int], copies: int = 200_000) -> None:
    pub = await RawClient.open(b.port)
    body = b"x" * 100
    for k in sizes:
        ex = f"scale.fan{k}"
        await pub.call("exchange.declare", exchange=ex, type="fanout")
        sub = await RawClient.open(b.port)
        for i in range(k):
            q = f"scale-f{k}-{i}"
            await pub.call("queue.declare", queue=q)
            await pub.call("queue.bind", queue=q, exchange=ex, routing_key="")
            await sub.call("basic.consume", queue=q, consumer_tag=f"c{i}", no_ack=True)
        messages = max(2_000, copies // k)
        await asyncio.sleep(1.0)
        cpu = cpu_seconds(b.pid)
        t = time.perf_counter()

        sender = asyncio.ensure_future(_publish(pub, ex, body, messages))
        got = await sub.count_deliveries(messages * k, timeout=300)
        await sender
        took = time.perf_counter() - t
        cpu = cpu_seconds(b.pid) - cpu
        emit(
            out,
            scenario="fanout",
            broker=b.kind,
            n=k,
            messages=messages,
            delivered=got,
            cpu_per_copy_us=cpu / max(got, 1) * 1e6,
            copies_per_second=got / took,
            rss=rss(b.pid),
        )
        sub.close()
        for i in range(k):
            await pub.call("queue.delete", queue=f"scale-f{k}-{i}")
    pub.close()


async def _publish(pub: RawClient, exchange: str, body: bytes, messages: int) -> None:
    for n in range(messages):
        pub.publish(exchange, "", body)
        if n % 500 == 499:
            await pub.drain()
    await pub.drain()


def _loadgen(loadgen: str, b: Broker, *args: str) -> dict[str, Any]:
    cmd = [loadgen, "-p", str(b.port), "-q", "scale-deep", "-m", "at-least-once", "-s", "100"]
    r = subprocess.run(
        [*cmd, "--broker-pid", str(b.pid), *args], capture_output=True, text=True, check=True
    )
    return json.loads(r.stdout.strip().splitlines()[-1])


async def _drain(port: int, n: int) -> int:
    c = await RawClient.open(port)
    try:
        return await c.drain_acking("scale-deep", n)
    finally:
        c.close()


def deep(b: Broker, out: Path, sizes: list[int], loadgen: str) -> None:
    for n in sizes:
        t = time.perf_counter()
        pub = _loadgen(loadgen, b, "-x", "1", "-y", "0", "-n", str(n), "--purge")
        fill = time.perf_counter() - t
        time.sleep(5.0)
        mem, on_disk = rss(b.pid), disk_bytes(b.data)
        t = time.perf_counter()
        got = asyncio.run(_drain(b.port, n))
        drain = time.perf_counter() - t
        emit(
            out,
            scenario="deep",
            broker=b.kind,
            n=n,
            rss_full=mem,
            disk_full=on_disk,
            publish_rate=n / fill,
            drained=got,
            drain_rate=got / drain,
            loadgen_publish=pub,
        )


SCENARIOS: dict[str, Callable[..., Any]] = {
    "connections": connections,
    "queues": queues,
    "bindings": bindings,
    "fanout": fanout,
}
DEFAULT_SIZES = {
    "connections": "1000,2500,5000,10000",
    "queues": "1000,2500,5000,10000",
    "bindings": "1000,10000,30000,100000",
    "fanout": "1,10,25,50,100",
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("scenarios", nargs="+", choices=[*SCENARIOS, "deep"])
    ap.add_argument("--rabbitmq", action="store_true", help="also against RabbitMQ")
    ap.add_argument("--out", default="bench/results/scale.jsonl")
    ap.add_argument("--loadgen", default=os.environ.get("AMQP_LOADGEN", "amqp-loadgen"))
    ap.add_argument("--deep-sizes", default="1000000,3000000,10000000")
    for name, sizes in DEFAULT_SIZES.items():
        ap.add_argument(f"--{name}-sizes", default=sizes)
    args = ap.parse_args()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # brokers started here inherit it
    kinds = ["merpati", "rabbitmq"] if args.rabbitmq else ["merpati"]
    if args.rabbitmq and shutil.which("rabbitmq-server") is None:
        raise SystemExit("--rabbitmq needs rabbitmq-server (apt-get install rabbitmq-server)")
    for scenario in args.scenarios:
        sizes = [int(s) for s in getattr(args, f"{scenario}_sizes").split(",")]
        for kind in kinds:
            b = Broker(kind)
            try:
                if scenario == "deep":
                    deep(b, out, sizes, args.loadgen)
                else:
                    asyncio.run(SCENARIOS[scenario](b, out, sizes))
            finally:
                b.stop()


if __name__ == "__main__":
    main()
