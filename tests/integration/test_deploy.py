"""deploy/: the Prometheus config, alert rules and Grafana dashboard are valid, and a real
Prometheus scraping a real node gets the numbers (skipped where Debian's `prometheus` is missing)."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pika
import pytest

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "merpati-overview.json"

promtool = shutil.which("promtool")
prometheus = shutil.which("prometheus")
needs_promtool = pytest.mark.skipif(
    promtool is None, reason="promtool (Debian package prometheus) not installed"
)


def _dashboard_exprs() -> list[str]:
    data = json.loads(DASHBOARD.read_text())
    exprs = []
    for panel in data["panels"]:
        for t in panel.get("targets", []):
            exprs.append(t["expr"])
    return exprs


def test_dashboard_is_well_formed_and_uses_exported_metrics():
    data = json.loads(DASHBOARD.read_text())
    assert data["uid"] == "merpati-overview" and data["schemaVersion"] >= 36
    ids = [p["id"] for p in data["panels"]]
    assert len(ids) == len(set(ids))
    for p in data["panels"]:
        assert {"x", "y", "w", "h"} <= set(p["gridPos"]) and p["gridPos"]["x"] + p["gridPos"][
            "w"
        ] <= 24
        assert p["type"] in ("row", "stat", "timeseries")
    # Every metric a panel queries is one the collector exports.
    collector = (ROOT / "node" / "metrics" / "collector.py").read_text()
    names = set()
    for expr in _dashboard_exprs():
        names |= set(re.findall(r"\b((?:rabbitmq|merpati)_[a-z_]+)", expr))
    for name in sorted(names):
        base = re.sub(r"_(total|bucket|sum|count)$", "", name)
        assert f'"{base}"' in collector or f'"{name}"' in collector, name


@needs_promtool
def test_promtool_checks_config_rules_and_alert_tests():
    r = subprocess.run(
        [promtool, "check", "config", "prometheus-compose.yml"],
        cwd=DEPLOY,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run(
        [promtool, "check", "config", "prometheus.yml"], cwd=DEPLOY, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run(
        [promtool, "check", "rules", "alerts.yml"], cwd=DEPLOY, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run(
        [promtool, "test", "rules", "alerts_test.yml"], cwd=DEPLOY, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stdout + r.stderr


@needs_promtool
def test_dashboard_queries_are_valid_promql(tmp_path):
    # promtool parses PromQL in recording rules: one rule per panel query.
    lines = ["groups:", "  - name: dashboard", "    rules:"]
    for i, expr in enumerate(_dashboard_exprs()):
        expr = expr.replace("$rabbitmq_cluster", "merpati")
        lines += [f"      - record: dashboard_query_{i}", f"        expr: {json.dumps(expr)}"]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text("\n".join(lines) + "\n")
    r = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(prometheus is None, reason="prometheus (Debian package) not installed")
def test_real_prometheus_scrapes_a_node(make_node, tmp_path):
    n = make_node()
    conn = pika.BlockingConnection(pika.URLParameters(n.url))
    ch = conn.channel()
    ch.queue_declare("prom-q")
    for _ in range(7):
        ch.basic_publish("", "prom-q", b"x")
    conn.close()
    port = _free_port()
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(
        "global:\n  scrape_interval: 1s\n"
        "scrape_configs:\n"
        "  - job_name: merpati\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{n.metrics_port}']\n"
        "  - job_name: merpati-per-object\n    metrics_path: /metrics/per-object\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{n.metrics_port}']\n"
    )
    proc = subprocess.Popen(
        [
            prometheus,
            f"--config.file={cfg}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def query(q: str) -> list:
            url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": q})
            with urllib.request.urlopen(url, timeout=5) as resp:
                return json.loads(resp.read())["data"]["result"]

        def wait_for(q: str) -> list:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    result = query(q)
                except OSError:
                    result = []
                if result:
                    return result
                time.sleep(0.5)
            raise AssertionError(f"Prometheus has no {q} after 30 s")

        ready = wait_for('rabbitmq_queue_messages_ready{job="merpati-per-object",queue="prom-q"}')
        assert ready[0]["value"][1] == "7"
        identity = wait_for('rabbitmq_identity_info{job="merpati"}')
        assert identity[0]["metric"]["rabbitmq_node"] == f"test@{n.port}"
        published = wait_for('rabbitmq_channel_messages_published_total{job="merpati"}')
        assert published[0]["value"][1] == "7"
    finally:
        proc.terminate()
        proc.wait(10)


def test_compose_file_names_three_clustered_nodes_and_existing_files():
    """No Docker engine here: check the compose file's structure and the files it mounts."""
    import json as _json

    text = (DEPLOY / "docker-compose.yml").read_text()
    for node in ("n1", "n2", "n3"):
        assert f"MERPATI_NODE_ID: {node}" in text
    assert "MERPATI_PEERS: n1=n1:25672,n2=n2:25672,n3=n3:25672" in text
    assert "MERPATI_CLUSTER_SECRET" in text
    for path in (
        "Dockerfile",
        "prometheus-compose.yml",
        "alerts.yml",
        "grafana/provisioning/datasources/prometheus.yml",
        "grafana/provisioning/dashboards/merpati.yml",
    ):
        assert (DEPLOY / path).is_file(), path
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert (
        "USER merpati" in dockerfile
        and "HEALTHCHECK" in dockerfile
        and 'ENTRYPOINT ["merpati", "server"]' in dockerfile
    )
    _json.loads((DEPLOY / "grafana" / "merpati-overview.json").read_text())
