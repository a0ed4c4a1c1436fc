"""`merpati ctl` as a subprocess against a real node (over its management API)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.support.clients import connect
from tests.support.ctl import ctl, ctl_out

ROOT = Path(__file__).resolve().parents[2]


def test_users_vhosts_permissions_and_listing(node):
    ctl_out(node, "add_vhost", "ctl-vh")
    ctl_out(node, "add_user", "carol", "pw", "--tags", "management")
    ctl_out(node, "set_permissions", "-p", "ctl-vh", "carol", ".*", ".*", ".*")
    assert "carol\t.*\t.*\t.*" in ctl_out(node, "list_permissions", "-p", "ctl-vh")
    conn = connect(node, user="carol", password="pw", vhost="ctl-vh")
    ch = conn.channel()
    ch.queue_declare("ctl-q")
    ch.exchange_declare("ctl-x", "fanout")
    ch.queue_bind("ctl-q", "ctl-x", "rk")
    for _ in range(3):
        ch.basic_publish("", "ctl-q", b"m")
    ch.basic_consume("ctl-q", lambda *a: None, consumer_tag="ctl-ctag")
    conn.process_data_events(time_limit=0.2)

    out = ctl_out(node, "list_queues", "-p", "ctl-vh", "name", "messages", "consumers", "durable")
    lines = out.splitlines()
    assert lines[0] == "Listing queues for vhost ctl-vh ..."
    assert lines[1] == "name\tmessages\tconsumers\tdurable"
    assert lines[2] == "ctl-q\t3\t1\tfalse"
    out = ctl_out(node, "-q", "list-exchanges", "-p", "ctl-vh", "name", "type")
    assert "ctl-x\tfanout" in out.splitlines() and not out.startswith("Listing")
    out = ctl_out(
        node, "list_bindings", "-p", "ctl-vh", "source_name", "destination_name", "routing_key"
    )
    assert "ctl-x\tctl-q\trk" in out.splitlines()
    out = ctl_out(node, "list_connections", "user", "vhost", "channels")
    assert "carol\tctl-vh\t1" in out.splitlines()
    out = ctl_out(
        node, "list_consumers", "-p", "ctl-vh", "queue_name", "consumer_tag", "ack_required"
    )
    assert "ctl-q\tctl-ctag\ttrue" in out.splitlines()
    rows = json.loads(
        ctl_out(node, "--formatter", "json", "list_queues", "-p", "ctl-vh", "name", "messages")
    )
    assert rows == [{"name": "ctl-q", "messages": 3}]
    conn.close()

    ctl_out(node, "purge_queue", "-p", "ctl-vh", "ctl-q")
    assert "ctl-q\t0" in ctl_out(node, "list_queues", "-p", "ctl-vh").splitlines()
    ctl_out(node, "delete_queue", "-p", "ctl-vh", "ctl-q")
    assert ctl_out(node, "-q", "list_queues", "-p", "ctl-vh").splitlines() == ["name\tmessages"]
    ctl_out(node, "delete_user", "carol")
    assert "carol" not in ctl_out(node, "list_users")


def test_policies_status_and_errors(node):
    ctl_out(
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
    out = ctl_out(node, "list_policies")
    assert '/\tctl-pol\t^ctl-pol-\tqueues\t{"max-length":10}\t3' in out.splitlines()
    ctl_out(node, "clear_policy", "ctl-pol")
    assert "ctl-pol" not in ctl_out(node, "list_policies")

    out = ctl_out(node, "status")
    assert f"Status of node test@{node.port}" in out and f"amqp: 127.0.0.1:{node.port}" in out
    assert f"test@{node.port}" in ctl_out(node, "cluster_status")

    r = ctl(node, "delete_queue", "no-such-queue", check=False)
    assert r.returncode == 1 and "no queue 'no-such-queue'" in r.stderr
    r = ctl(node, "--password", "wrong", "status", check=False)
    assert r.returncode == 77
    r = ctl(node, "status", env={"MERPATI_CTL_PASSWORD": "wrong"}, check=False)
    assert r.returncode == 77
    r = subprocess.run(
        [sys.executable, "-m", "merpati.node", "ctl", "--port", "1", "status"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert r.returncode == 69 and "cannot reach" in r.stderr
    r = ctl(node, "set_policy", "p", ".*", "not json", check=False)
    assert r.returncode == 64


def test_export_then_import_into_a_fresh_node(make_node, tmp_path):
    a = make_node()
    ctl_out(a, "add_vhost", "exp")
    ctl_out(a, "set_permissions", "-p", "exp", "guest", ".*", ".*", ".*")
    conn = connect(a, vhost="exp")
    ch = conn.channel()
    ch.queue_declare("exp-q", durable=True)
    ch.exchange_declare("exp-x", "topic", durable=True)
    ch.queue_bind("exp-q", "exp-x", "a.#")
    conn.close()
    path = tmp_path / "defs.json"
    ctl_out(a, "export_definitions", str(path))
    b = make_node()
    ctl_out(b, "import_definitions", str(path))
    out = ctl_out(
        b, "-q", "list_bindings", "-p", "exp", "source_name", "destination_name", "routing_key"
    )
    assert "exp-x\texp-q\ta.#" in out.splitlines()
    assert json.loads(path.read_text())["queues"][0]["name"] == "exp-q"
