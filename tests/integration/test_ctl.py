"""`merpati ctl` as a subprocess against a real node (over its management API)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pika

ROOT = Path(__file__).resolve().parents[2]


def ctl(node, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "node", "ctl", "--port", str(node.management_port), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


def ok(node, *args: str) -> str:
    r = ctl(node, *args)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_users_vhosts_permissions_and_listing(node):
    ok(node, "add_vhost", "ctl-vh")
    ok(node, "add_user", "carol", "pw", "--tags", "management")
    ok(node, "set_permissions", "-p", "ctl-vh", "carol", ".*", ".*", ".*")
    assert "carol\t.*\t.*\t.*" in ok(node, "list_permissions", "-p", "ctl-vh")
    conn = pika.BlockingConnection(
        pika.URLParameters(f"amqp://carol:pw@127.0.0.1:{node.port}/ctl-vh")
    )
    ch = conn.channel()
    ch.queue_declare("ctl-q")
    ch.exchange_declare("ctl-x", "fanout")
    ch.queue_bind("ctl-q", "ctl-x", "rk")
    for _ in range(3):
        ch.basic_publish("", "ctl-q", b"m")
    ch.basic_consume("ctl-q", lambda *a: None, consumer_tag="ctl-ctag")
    conn.process_data_events(time_limit=0.2)

    out = ok(node, "list_queues", "-p", "ctl-vh", "name", "messages", "consumers", "durable")
    lines = out.splitlines()
    assert lines[0] == "Listing queues for vhost ctl-vh ..."
    assert lines[1] == "name\tmessages\tconsumers\tdurable"
    assert lines[2] == "ctl-q\t3\t1\tfalse"
    out = ok(node, "-q", "list-exchanges", "-p", "ctl-vh", "name", "type")
    assert "ctl-x\tfanout" in out.splitlines() and not out.startswith("Listing")
    out = ok(
        node, "list_bindings", "-p", "ctl-vh", "source_name", "destination_name", "routing_key"
    )
    assert "ctl-x\tctl-q\trk" in out.splitlines()
    out = ok(node, "list_connections", "user", "vhost", "channels")
    assert "carol\tctl-vh\t1" in out.splitlines()
    out = ok(node, "list_consumers", "-p", "ctl-vh", "queue_name", "consumer_tag", "ack_required")
    assert "ctl-q\tctl-ctag\ttrue" in out.splitlines()
    rows = json.loads(
        ok(node, "--formatter", "json", "list_queues", "-p", "ctl-vh", "name", "messages")
    )
    assert rows == [{"name": "ctl-q", "messages": 3}]
    conn.close()

    ok(node, "purge_queue", "-p", "ctl-vh", "ctl-q")
    assert "ctl-q\t0" in ok(node, "list_queues", "-p", "ctl-vh").splitlines()
    ok(node, "delete_queue", "-p", "ctl-vh", "ctl-q")
    assert ok(node, "-q", "list_queues", "-p", "ctl-vh").splitlines() == ["name\tmessages"]
    ok(node, "delete_user", "carol")
    assert "carol" not in ok(node, "list_users")


def test_policies_status_and_errors(node):
    ok(
        node,
        "set_policy",
        "ctl-pol",
        "^ctl-pol-",
        '{"max-length": 10}',
        "--priority",
        "3",
        "--apply-to",
        "queues",
    )
    out = ok(node, "list_policies")
    assert '/\tctl-pol\t^ctl-pol-\tqueues\t{"max-length":10}\t3' in out.splitlines()
    ok(node, "clear_policy", "ctl-pol")
    assert "ctl-pol" not in ok(node, "list_policies")

    out = ok(node, "status")
    assert f"Status of node test@{node.port}" in out and f"amqp: 127.0.0.1:{node.port}" in out
    assert f"test@{node.port}" in ok(node, "cluster_status")

    r = ctl(node, "delete_queue", "no-such-queue")
    assert r.returncode == 1 and "no queue 'no-such-queue'" in r.stderr
    r = ctl(node, "--password", "wrong", "status")
    assert r.returncode == 77
    r = ctl(node, "status", env={"MERPATI_CTL_PASSWORD": "wrong"})
    assert r.returncode == 77
    r = subprocess.run(
        [sys.executable, "-m", "node", "ctl", "--port", "1", "status"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert r.returncode == 69 and "cannot reach" in r.stderr
    r = ctl(node, "set_policy", "p", ".*", "not json")
    assert r.returncode == 64


def test_export_then_import_into_a_fresh_node(make_node, tmp_path):
    a = make_node()
    ok(a, "add_vhost", "exp")
    ok(a, "set_permissions", "-p", "exp", "guest", ".*", ".*", ".*")
    conn = pika.BlockingConnection(pika.URLParameters(f"amqp://guest:guest@127.0.0.1:{a.port}/exp"))
    ch = conn.channel()
    ch.queue_declare("exp-q", durable=True)
    ch.exchange_declare("exp-x", "topic", durable=True)
    ch.queue_bind("exp-q", "exp-x", "a.#")
    conn.close()
    path = tmp_path / "defs.json"
    ok(a, "export_definitions", str(path))
    b = make_node()
    ok(b, "import_definitions", str(path))
    out = ok(
        b, "-q", "list_bindings", "-p", "exp", "source_name", "destination_name", "routing_key"
    )
    assert "exp-x\texp-q\ta.#" in out.splitlines()
    assert json.loads(path.read_text())["queues"][0]["name"] == "exp-q"
