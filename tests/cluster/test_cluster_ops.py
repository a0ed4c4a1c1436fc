"""Operating a cluster with `merpati ctl`: status, a node added while traffic flows, rebalance."""

from __future__ import annotations

import json
import signal
import threading
import time

import pika
import pytest

from tests.support.clients import connect
from tests.support.ctl import ctl_out
from tests.support.node import NodeProcess

from .conftest import _port_pair, start_cluster


@pytest.fixture
def fresh_cluster():
    c = start_cluster()
    yield c
    c.stop()
    for n in c.nodes.values():
        if n.alive():
            n.stop(signal.SIGKILL)


def test_cluster_status_shows_members_leader_and_queue_leaders(fresh_cluster):
    conn = connect(fresh_cluster["n2"])
    ch = conn.channel()
    for i in range(3):
        ch.queue_declare(f"status-{i}", durable=True)
    conn.close()
    status = json.loads(ctl_out(fresh_cluster["n3"], "--formatter", "json", "cluster_status"))
    assert sorted(status["members"]) == ["n1", "n2", "n3"]
    assert status["raft_leader"] in ("n1", "n2", "n3")
    assert sum(status["queue_leaders"].values()) == 3
    text = ctl_out(fresh_cluster["n1"], "cluster_status")
    assert "Queue leaders per node:" in text and "Metadata (Raft) leader:" in text


def test_a_new_node_joins_by_itself_while_traffic_flows(fresh_cluster):
    pub = connect(fresh_cluster["n1"])
    ch = pub.channel()
    ch.queue_declare("traffic", durable=True)
    ch.confirm_delivery()
    stop = threading.Event()
    errors: list[BaseException] = []
    sent = [0]

    def publish():
        try:
            while not stop.is_set():
                ch.basic_publish(
                    "", "traffic", b"%d" % sent[0], pika.BasicProperties(delivery_mode=2)
                )
                sent[0] += 1
        except BaseException as e:  # recorded and asserted below
            errors.append(e)

    t = threading.Thread(target=publish)
    t.start()
    port = _port_pair()
    peers = fresh_cluster.peers + f",n4=127.0.0.1:{port}"
    n4 = NodeProcess(
        "--node-id",
        "n4",
        "--cluster-port",
        str(port),
        "--raft-port",
        str(port + 1),
        "--peers",
        peers,
    )
    # Its data directory is new: it asks the nodes it was given to add it (no ctl add_node).
    n4.start(wait=False)
    try:
        n4.wait_ready(timeout=60)
        assert "joined the cluster through" in n4.log()
        # add_node of a member at the same address is a no-op that succeeds.
        ctl_out(fresh_cluster["n2"], "add_node", "n4", f"127.0.0.1:{port}")
        # The new node serves clients with the cluster's metadata and reaches queues elsewhere.
        c4 = connect(n4)
        c4ch = c4.channel()
        assert c4ch.queue_declare("traffic", passive=True).method.message_count > 0
        c4ch.queue_declare("on-any-node", durable=True)
        c4ch.basic_publish("", "on-any-node", b"hello from n4")
        status = json.loads(ctl_out(n4, "--formatter", "json", "cluster_status"))
        assert "n4" in status["members"]
        c4.close()
    finally:
        stop.set()
        t.join(10)
        n4.stop()
    assert not errors, errors
    assert sent[0] > 0
    c1 = connect(fresh_cluster["n1"])
    assert c1.channel().queue_declare("traffic", passive=True).method.message_count == sent[0]
    c1.close()


def test_rebalance_moves_idle_queue_leaders(fresh_cluster):
    fresh_cluster["n3"].stop(signal.SIGKILL)
    conn = connect(fresh_cluster["n1"])
    ch = conn.channel()
    names = [f"pile-{i}" for i in range(6)]
    for name in names:
        ch.queue_declare(name, durable=True)
    conn.close()
    fresh_cluster["n3"].start(timeout=60)
    before = json.loads(ctl_out(fresh_cluster["n1"], "--formatter", "json", "cluster_status"))[
        "queue_leaders"
    ]
    assert before.get("n3", 0) == 0
    deadline = time.monotonic() + 15
    while True:
        moves = json.loads(ctl_out(fresh_cluster["n1"], "--formatter", "json", "rebalance"))
        if moves:
            break
        assert time.monotonic() < deadline, "rebalance moved nothing"
        time.sleep(0.5)
    after = json.loads(ctl_out(fresh_cluster["n1"], "--formatter", "json", "cluster_status"))[
        "queue_leaders"
    ]
    assert after["n3"] >= 1 and max(after.values()) - min(after.values()) <= 1, after
    # Moved queues work on their new node, once the client's node knows of the moves and
    # reaches n3 again. (Before n2 applied them, a publish through it goes to the old leader,
    # which refuses forwarded messages for a queue it no longer leads; while n2's link to the
    # restarted n3 is still down, its queues there refuse too: the publisher gets a nack either
    # way. That race is real and noted for a fix; this test checks the moved queues themselves.)
    deadline = time.monotonic() + 15
    while True:
        seen = json.loads(ctl_out(fresh_cluster["n2"], "--formatter", "json", "cluster_status"))
        if seen["queue_leaders"] == after and "n3" in seen["running"]:
            break
        assert time.monotonic() < deadline, f"n2 never saw the moves and n3 up: {seen}"
        time.sleep(0.2)
    conn = connect(fresh_cluster["n2"])
    ch = conn.channel()
    ch.confirm_delivery()
    for name in names:
        ch.basic_publish("", name, b"x")
    for name in names:
        assert ch.queue_declare(name, passive=True).method.message_count == 1
    conn.close()


def test_node_is_quorum_critical_when_its_loss_breaks_the_raft_majority(fresh_cluster):
    import base64
    import urllib.error
    import urllib.request

    def check(node) -> int:
        req = urllib.request.Request(
            node.management_url + "/api/health/checks/node-is-quorum-critical"
        )
        req.add_header("Authorization", "Basic " + base64.b64encode(b"guest:guest").decode())
        try:
            return urllib.request.urlopen(req, timeout=10).status
        except urllib.error.HTTPError as e:
            return e.code

    assert check(fresh_cluster["n1"]) == 200  # 3 of 3 up: losing one leaves a majority
    fresh_cluster["n3"].stop(signal.SIGKILL)
    deadline = time.monotonic() + 15
    while check(fresh_cluster["n1"]) != 503:
        assert time.monotonic() < deadline, "n1 never became quorum-critical with n3 down"
        time.sleep(0.3)


def test_removing_the_raft_leader_hands_the_leadership_over_first(fresh_cluster):
    # pysyncobj's leader refuses to remove itself: the node asked makes it step down first.
    status = json.loads(ctl_out(fresh_cluster["n1"], "--formatter", "json", "cluster_status"))
    leaving = status["raft_leader"]
    asked = next(n for n in ("n1", "n2", "n3") if n != leaving)
    ctl_out(fresh_cluster[asked], "remove_node", leaving)
    after = json.loads(ctl_out(fresh_cluster[asked], "--formatter", "json", "cluster_status"))
    assert sorted(after["members"]) == sorted(n for n in ("n1", "n2", "n3") if n != leaving)
    assert after["raft_leader"] not in (leaving, None)
    fresh_cluster[leaving].stop()
    # The two left are the whole Raft group now: metadata changes still commit.
    conn = connect(fresh_cluster[asked])
    conn.channel().queue_declare("after-removal", durable=True)
    conn.close()
