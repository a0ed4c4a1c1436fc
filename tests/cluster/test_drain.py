"""Draining a node (`merpati ctl drain-node`, POST /api/merpati/cluster/nodes/NODE/drain) with real
node processes: its queues move with every message (paged ones and unacknowledged deliveries
included), it gets no new queues, a SIGKILL in the middle loses nothing, a one-node cluster is
told there is nowhere to go."""

from __future__ import annotations

import collections
import json
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import pika
import pytest

from tests.support.clients import connect
from tests.support.ctl import ctl
from tests.support.http import call, q

from .conftest import start_cluster

BODY = 1000  # bytes per message: 5000 of them are five times the 1 MB memory budget below


def body_of(i: int) -> bytes:
    return (b"%05d:" % i).ljust(BODY, b".")


def publish(node: Any, queue: str, n: int) -> None:
    conn = connect(node)
    ch = conn.channel()
    ch.confirm_delivery()
    persistent = pika.BasicProperties(delivery_mode=2)
    for i in range(n):
        ch.basic_publish("", queue, body_of(i), persistent, mandatory=True)
    conn.close()


def queue_info(node: Any, name: str) -> dict[str, Any]:
    status, info = call(node.management_url, "GET", f"/api/queues/{q('/')}/{q(name)}")
    assert status == 200, info
    return info


def consume_all(node: Any, queue: str, quiet: float = 2.0) -> list[bytes]:
    """Every message the queue gives until it stays empty for `quiet` seconds (acked)."""
    conn = connect(node)
    ch = conn.channel()
    ch.basic_qos(prefetch_count=500)
    got: list[bytes] = []
    last = time.monotonic()
    for method, _props, body in ch.consume(queue, inactivity_timeout=0.2):
        if method is None:
            if time.monotonic() - last > quiet:
                break
            continue
        got.append(body)
        last = time.monotonic()
        ch.basic_ack(method.delivery_tag)
    ch.cancel()
    conn.close()
    return got


def leaders(node: Any) -> dict[str, int]:
    status = json.loads(ctl(node, "--formatter", "json", "cluster_status").stdout)
    return status["queue_leaders"]


def no_tracebacks(c: Any) -> None:
    for name, n in c.nodes.items():
        assert "Traceback" not in n.log(), f"{name}:\n{n.log()}"


@pytest.fixture
def budget_cluster():
    c = start_cluster(extra=("--message-memory-budget", "1000000"))
    yield c
    c.stop()
    no_tracebacks(c)


def test_drain_moves_paged_messages_and_unacked_deliveries(budget_cluster):
    n1, n2 = budget_cluster["n1"], budget_cluster["n2"]
    c1 = connect(n1)
    ch1 = c1.channel()
    ch1.queue_declare("orders", durable=True)
    ch1.queue_declare("session", exclusive=True)  # stays: it dies with its connection
    assert queue_info(n1, "orders")["node"] == "n1"
    publish(n1, "orders", 5000)
    assert queue_info(n1, "orders")["messages"] == 5000
    # A consumer on n1 and one on n2 (through n2's forwarding stream) hold deliveries unacked.
    held: list[Any] = []
    cancelled = threading.Event()
    ch1.basic_qos(prefetch_count=50)
    ch1.add_on_cancel_callback(lambda _frame: cancelled.set())
    ch1.basic_consume("orders", lambda _ch, m, _p, b: held.append((m.delivery_tag, b)))
    c2 = connect(n2)
    ch2 = c2.channel()
    ch2.basic_qos(prefetch_count=20)
    held2: list[bytes] = []
    ch2.basic_consume("orders", lambda _ch, _m, _p, b: held2.append(b))
    deadline = time.monotonic() + 20
    while len(held) < 50 or len(held2) < 20:
        c1.process_data_events(0.1)
        c2.process_data_events(0.1)
        assert time.monotonic() < deadline, (len(held), len(held2))

    result: dict[str, Any] = {}
    drain = threading.Thread(
        target=lambda: result.update(
            out=ctl(n1, "--formatter", "json", "drain-node", "--wait", "90", check=False)
        )
    )
    drain.start()
    # The consumer on n1 is told (consumer_cancel_notify); its deliveries are still its own:
    # half are acked (gone for good), half requeued (they follow the queue).
    deadline = time.monotonic() + 30
    while not cancelled.is_set():
        c1.process_data_events(0.1)
        c2.process_data_events(0.01)
        assert time.monotonic() < deadline, "the consumer on n1 was not cancelled"
    acked = {b for _t, b in held[:25]}
    for tag, _b in held[:25]:
        ch1.basic_ack(tag)
    for tag, _b in held[25:]:
        ch1.basic_nack(tag, requeue=True)
    c1.process_data_events(0.1)
    drain.join(120)
    out = result["out"]
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout)
    assert report["complete"] and report["draining"], report
    [moved] = report["moved"]
    assert (moved["queue"], report["pending"]) == ("orders", [])
    new_leader = moved["to"]
    assert new_leader in ("n2", "n3")
    assert [r["queue"] for r in report["not_moved"]] == ["session"]
    assert report["not_moved"][0]["reason"].startswith("exclusive")

    info = queue_info(budget_cluster[new_leader], "orders")
    assert (info["node"], info["handing_over"]) == (new_leader, [])
    # n1 leads only the exclusive queue, and new queues (declared on n1) go elsewhere.
    assert leaders(n1)["n1"] == 1
    for i in range(4):
        ch1.queue_declare(f"after-drain-{i}", durable=True)
        assert queue_info(n1, f"after-drain-{i}")["node"] != "n1"
    c1.close()
    c2.close()  # the n2 consumer's deliveries were released when the queue moved

    got = consume_all(budget_cluster[new_leader], "orders")
    expected = [body_of(i) for i in range(5000) if body_of(i) not in acked]
    assert collections.Counter(got) == collections.Counter(expected)
    # In order, apart from the deliveries that came back (requeued, released).
    returned = {b for _t, b in held[25:]} | set(held2)
    rest = [b for b in got if b not in returned]
    assert rest == sorted(rest)


def test_drain_then_sigkill_mid_way_loses_nothing(tmp_path):
    # A small window keeps the handover slow enough to be caught in the middle.
    c = start_cluster(extra=("--message-memory-budget", "1000000", "--handover-window", "4"))
    try:
        n1 = c["n1"]
        conn = connect(n1)
        conn.channel().queue_declare("big", durable=True)
        conn.close()
        assert queue_info(n1, "big")["node"] == "n1"
        publish(n1, "big", 3000)
        drain = subprocess.Popen(
            [sys.executable, "-m", "merpati.node", "ctl", "--port", str(n1.management_port)]
            + ["drain-node", "--wait", "60"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                info = queue_info(c["n2"], "big")
                if info["node"] != "n1":
                    there = queue_info(c[info["node"]], "big")["messages"]
                    if there > 0:
                        break
                assert time.monotonic() < deadline, "the handover never started"
                time.sleep(0.05)
            n1.stop(signal.SIGKILL)
            new_leader = info["node"]
            moved_before = queue_info(c[new_leader], "big")["messages"]
            assert moved_before < 3000, "the handover finished before the kill: nothing tested"
        finally:
            drain.wait(90)
        # It starts again (with the default window: the small one was only there to be caught
        # in the middle) and hands the rest over from its store.
        n1.extra[n1.extra.index("--handover-window") + 1] = "1000"
        n1.start(timeout=60)
        deadline = time.monotonic() + 120
        while queue_info(c[new_leader], "big")["handing_over"]:
            assert time.monotonic() < deadline, (
                "n1 never finished handing over:\n" + n1.log()[-6000:]
            )
            time.sleep(0.2)
        got = consume_all(c[new_leader], "big")
        assert set(got) == {body_of(i) for i in range(3000)}  # nothing lost
        assert len(got) >= 3000  # (some twice: at-least-once across the crash)
        # n1 started again: it takes new queues again.
        assert "draining" not in ctl(n1, "cluster_status").stdout.lower()
    finally:
        c.stop()
    no_tracebacks(c)


def test_ctl_drain_node_of_another_node_then_undrain(budget_cluster):
    n1, n3 = budget_cluster["n1"], budget_cluster["n3"]
    conn = connect(n3)
    ch = conn.channel()
    ch.confirm_delivery()
    for i in range(3):
        ch.queue_declare(f"q{i}", durable=True)
    mine = [f"q{i}" for i in range(3) if queue_info(n1, f"q{i}")["node"] == "n3"]
    assert mine, "placement put nothing on n3"
    for name in mine:
        ch.basic_publish("", name, b"hello " + name.encode(), pika.BasicProperties(delivery_mode=2))
    conn.close()
    out = ctl(n1, "drain-node", "--node", "n3", "--wait", "30").stdout
    assert out.startswith("Draining node n3 ...\n")
    for name in mine:
        assert f"moved\t/\t{name}\t-> n" in out
    assert (
        f"Node n3 is draining: {len(mine)} queue(s) moved, 0 still handing over, 0 not moved" in out
    )
    status = ctl(n1, "cluster_status").stdout
    assert "Draining Nodes (no new queues):\n  n3\n" in status
    for name in mine:
        info = queue_info(n1, name)
        assert info["node"] in ("n1", "n2") and info["messages"] == 1, info
    assert leaders(n1).get("n3", 0) == 0
    ctl(n1, "undrain-node", "--node", "n3")
    assert "Draining" not in ctl(n1, "cluster_status").stdout
    # Unknown nodes are 404s.
    bad = ctl(n1, "drain-node", "--node", "n9", check=False)
    assert bad.returncode == 1 and "404" in bad.stderr and "no node 'n9'" in bad.stderr


def test_drain_of_a_single_node_says_there_is_no_other_node(make_node):
    n = make_node()
    out = ctl(n, "drain-node", check=False)
    assert out.returncode == 1
    assert "there is no other node to move its queues to" in out.stderr, out.stderr
    status, body = call(
        n.management_url, "POST", f"/api/merpati/cluster/nodes/{q(f'test@{n.port}')}/drain", {}
    )
    assert status == 400 and "only node of the cluster" in body["reason"]


def test_prestop_hook_drains_the_node_then_sigterm_hands_over_what_consumers_held(
    budget_cluster,
):
    """helm/merpati/files/probe.py prestop with the environment the chart gives the pod: the drain
    moves the node's queues; a consumer there that holds deliveries keeps the handover from
    finishing within the hook's time, and the stop that follows (SIGTERM) sends them on."""
    import os
    from pathlib import Path

    n1, n2 = budget_cluster["n1"], budget_cluster["n2"]
    conn = connect(n2)
    ch = conn.channel()
    ch.queue_declare("work", durable=True)  # the first queue of a fresh cluster: led by n2
    # Declared once n2 applied it; n1 applies the same Raft entry a moment later.
    deadline = time.monotonic() + 10
    while call(n1.management_url, "GET", "/api/queues/%2F/work")[0] != 200:
        assert time.monotonic() < deadline, "n1 never saw the queue n2 declared"
        time.sleep(0.05)
    assert queue_info(n1, "work")["node"] == "n2"
    publish(n2, "work", 300)
    ch.basic_qos(prefetch_count=10)
    held: list[bytes] = []
    ch.basic_consume("work", lambda _ch, _m, _p, b: held.append(b))  # never acks
    while len(held) < 10:
        conn.process_data_events(0.1)
    probe = Path(__file__).resolve().parents[2] / "helm" / "merpati" / "files" / "probe.py"
    env = {
        **os.environ,
        "MERPATI_NODE_ID": "n2",
        "MERPATI_MANAGEMENT_PORT": str(n2.management_port),
        "MERPATI_CTL_USER": "guest",
        "MERPATI_CTL_PASSWORD": "guest",
        "MERPATI_PROBE_CLUSTERED": "true",
        "PRESTOP_TIMEOUT": "6",  # the drain waits 4 s of them
    }
    out = subprocess.run(
        [sys.executable, str(probe), "prestop"], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "drain: 0 queue(s) moved, 1 still handing over, 0 not moved" in out.stdout, out.stdout
    assert '"remaining": 0, "unacked": 10' in out.stdout, out.stdout
    info = queue_info(n1, "work")
    new_leader = info["node"]
    assert new_leader != "n2" and info["messages"] == 290 and info["handing_over"] == ["n2"]
    assert leaders(n1)["n2"] == 0
    # The kubelet's SIGTERM: the node closes the consumer's connection, whose deliveries go on.
    n2.stop()
    info = queue_info(n1, "work")
    assert info["messages"] == 300 and info["handing_over"] == [], info
    # It starts again and takes queues again.
    n2.start(timeout=60)
    assert "Draining" not in ctl(n1, "cluster_status").stdout
    got = consume_all(budget_cluster[new_leader], "work")
    assert sorted(got) == [body_of(i) for i in range(300)]
