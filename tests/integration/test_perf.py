"""`merpati perf` against a real node: a short run prints live lines and its summary."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def perf(node, *args: str) -> subprocess.CompletedProcess:
    uri = f"amqp://guest:guest@127.0.0.1:{node.port}/%2F"
    return subprocess.run(
        [sys.executable, "-m", "merpati.node", "perf", "--uri", uri, *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


def test_short_run_prints_lines_and_summary(node):
    r = perf(node, "-x", "1", "-y", "1", "-z", "2", "-c", "50", "-q", "100", "-s", "64")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert any(line.startswith("time 1.0s, sent: ") for line in lines), r.stdout
    assert any(line.startswith("sending rate avg: ") for line in lines)
    assert any(line.startswith("receiving rate avg: ") for line in lines)
    assert any("consumer latency min/median/75th/95th/99th/max" in line for line in lines)
    assert any(line.startswith("confirmed: ") and "nacked: 0" in line for line in lines)


def test_json_summary_counts_every_message(node):
    r = perf(node, "-x", "2", "-y", "2", "-C", "500", "-z", "20", "-c", "100", "-f", "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["sent"] == 1000
    assert summary["confirmed"] == 1000
    assert summary["received"] == 1000
    assert summary["latency_ms"]["median"] > 0
    assert summary["confirm_latency_ms"]["p99"] >= summary["confirm_latency_ms"]["median"]
    # Live lines (if the run lasted a second) go to stderr: stdout is only the JSON.
    assert r.stdout.lstrip().startswith("{")


def test_autoack_consumers(node):
    r = perf(node, "-x", "1", "-y", "2", "-C", "300", "-z", "20", "-a", "-q", "0", "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["sent"] == summary["received"] == 300


def test_unreachable_broker_exits_69(node):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "merpati.node",
            "perf",
            "--uri",
            "amqp://guest:guest@127.0.0.1:1/",
            "-z",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert r.returncode == 69 and "merpati perf" in r.stderr
