"""What the metrics cost: publish/deliver rate with the exporter on (scraped every second) vs off.

    python bench/metrics_overhead.py --loadgen /tmp/lg/amqp-loadgen [--runs 3] [--duration 10]
        [--baseline-tree PATH]

Starts one node with --metrics-port (and a scraper hitting /metrics once a second, harsher than
Prometheus' default 15 s) and one with --metrics-port 0 --management-port 0, then runs the same
loadgen command against each, interleaved (on, off, on, off, ...), and prints the median
publish and receive rates of each. With --baseline-tree, a third node runs from another source
tree (e.g. a worktree with the counter increments removed) to show what the counters cost.
Figures, not a test: the machine's other load shows up in them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.node import NodeProcess  # noqa: E402


class TreeNode(NodeProcess):
    """A node process run from another source tree."""

    def __init__(self, tree: Path, *extra: str) -> None:
        super().__init__(*extra)
        self.tree = tree

    def start(self, timeout: float = 15.0) -> NodeProcess:
        self.env = {**self.env, "PYTHONPATH": str(self.tree)}
        cwd = os.getcwd()
        os.chdir(self.tree)
        try:
            return super().start(timeout)
        finally:
            os.chdir(cwd)


def scraper(url: str, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            urllib.request.urlopen(url, timeout=5).read()
        except OSError:
            pass
        stop.wait(1.0)


def loadgen(path: str, port: int, duration: int, queue: str) -> dict:
    out = subprocess.run(
        [
            path,
            "-p",
            str(port),
            "-m",
            "at-least-once",
            "-d",
            str(duration),
            "-q",
            queue,
            "--delete-queue",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--loadgen", required=True)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--baseline-tree", type=Path)
    args = ap.parse_args()

    on = NodeProcess().start()
    off = NodeProcess("--metrics-port", "0", "--management-port", "0")
    # The later flags win: the harness passes free ports first, these zeros disable them.
    off.start()
    nodes = {"metrics on (scraped 1/s)": on, "metrics off": off}
    if args.baseline_tree:
        base = TreeNode(args.baseline_tree, "--metrics-port", "0", "--management-port", "0")
        base.start()
        nodes["no counters (baseline tree)"] = base
    stop = threading.Event()
    t = threading.Thread(target=scraper, args=(on.metrics_url + "/metrics", stop), daemon=True)
    t.start()
    results: dict[str, list[dict]] = {name: [] for name in nodes}
    try:
        for i in range(args.runs):
            for name, node in nodes.items():
                r = loadgen(args.loadgen, node.port, args.duration, f"qX{i}")
                results[name].append(r)
                print(
                    f"run {i + 1} {name}: pub {r['pub_rate']:.0f}/s recv {r['recv_rate']:.0f}/s",
                    flush=True,
                )
                time.sleep(1)
    finally:
        stop.set()
        for node in nodes.values():
            node.stop()
    print()
    ref = None
    for name, rs in results.items():
        pub = statistics.median(r["pub_rate"] for r in rs)
        recv = statistics.median(r["recv_rate"] for r in rs)
        if ref is None:
            ref = (pub, recv)
        print(
            f"{name:30s} median pub {pub:8.0f} msg/s  recv {recv:8.0f} msg/s  "
            f"({(pub / ref[0] - 1) * 100:+.1f}% / {(recv / ref[1] - 1) * 100:+.1f}% vs metrics on)"
        )
    return 0


if __name__ == "__main__":
    tempfile.tempdir = None
    sys.exit(main())
