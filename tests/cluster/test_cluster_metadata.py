"""A three-node cluster shares one metadata: declarations on any node, seen on every node."""

from __future__ import annotations

import signal
import time

import pika.exceptions as pex
import pytest

from tests.cluster.conftest import wait_all_running
from tests.support.clients import connect
from tests.support.http import call
from tests.support.names import uid


def test_exchange_declared_on_one_node_exists_on_all(cluster):
    name = uid("x")
    c1 = connect(cluster["n1"])
    c1.channel().exchange_declare(name, "topic", durable=True)
    for n in ("n2", "n3"):
        conn = connect(cluster[n])
        conn.channel().exchange_declare(name, passive=True)
        conn.close()
    c1.close()


def test_inequivalent_redeclare_on_another_node_is_406(cluster):
    name = uid("q")
    c1 = connect(cluster["n1"])
    c1.channel().queue_declare(name, durable=True)
    c2 = connect(cluster["n2"])
    with pytest.raises(pex.ChannelClosedByBroker) as info:
        c2.channel().queue_declare(name, durable=False)
    assert info.value.reply_code == 406
    c1.close()
    c2.close()


def test_queue_leaders_are_spread_over_the_nodes(cluster):
    conn = connect(cluster["n1"])
    ch = conn.channel()
    names = [uid("spread") for _ in range(6)]
    for name in names:
        ch.queue_declare(name, durable=True)
    leaders = {}
    import json
    import urllib.request

    req = urllib.request.Request(cluster["n1"].management_url + "/api/queues")
    import base64

    req.add_header("Authorization", "Basic " + base64.b64encode(b"guest:guest").decode())
    for q in json.loads(urllib.request.urlopen(req, timeout=10).read()):
        if q["name"] in names:
            leaders[q["name"]] = q["node"]
    assert len(leaders) == 6
    assert len(set(leaders.values())) == 3, leaders
    conn.close()


def test_raft_leader_killed_declarations_continue(cluster):
    import json
    import subprocess
    import sys

    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "merpati.node",
            "ctl",
            "--port",
            str(cluster["n1"].management_port),
            "--formatter",
            "json",
            "cluster_status",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    status = json.loads(out.stdout)
    leader = status["raft_leader"]
    assert leader in ("n1", "n2", "n3")
    survivor = next(n for n in ("n1", "n2", "n3") if n != leader)
    cluster[leader].stop(signal.SIGKILL)
    t0 = time.monotonic()
    name = uid("after-failover")
    while True:
        try:
            conn = connect(cluster[survivor])
            conn.channel().exchange_declare(name, "fanout")
            conn.close()
            break
        except (pex.AMQPError, OSError):
            assert time.monotonic() - t0 < 30, "declarations did not resume after the leader died"
            time.sleep(0.2)
    elapsed = time.monotonic() - t0
    # The old leader comes back and catches up.
    cluster[leader].start(timeout=60)
    conn = connect(cluster[leader])
    deadline = time.monotonic() + 15
    while True:
        try:
            conn.channel().exchange_declare(name, passive=True)
            break
        except pex.ChannelClosedByBroker:
            assert time.monotonic() < deadline
            time.sleep(0.2)
    conn.close()
    print(f"declarations resumed {elapsed:.2f} s after the Raft leader was killed")


def test_a_name_declared_through_one_node_is_there_at_once_through_the_others(cluster):
    """Read-your-writes: the declare-ok came from n1 after the Raft commit, and the very next
    request, through n2 or n3, finds the queue or exchange although that node may not have
    applied the entry yet (it waits for a barrier before answering 404)."""
    wait_all_running(cluster)  # the test before restarts a node
    conns = {n: connect(cluster[n]) for n in ("n1", "n2", "n3")}
    try:
        declare = conns["n1"].channel()
        others = {n: conns[n].channel() for n in ("n2", "n3")}
        for ch in others.values():
            ch.confirm_delivery()
        for i in range(40):
            qname, xname = uid(f"ryw{i}"), uid(f"rywx{i}")
            declare.queue_declare(qname)
            declare.exchange_declare(xname, "fanout")
            for ch in others.values():
                ch.queue_declare(qname, passive=True)
                ch.basic_publish(xname, "", b"routed nowhere, but the exchange exists")
        # Through the management API too (a load balancer may pick any node for each call).
        for i in range(20):
            name = uid(f"rywapi{i}")
            status, _ = call(cluster["n1"].management_url, "PUT", f"/api/queues/%2F/{name}", {})
            assert status in (201, 204)
            status, body = call(cluster["n3"].management_url, "GET", f"/api/queues/%2F/{name}")
            assert status == 200, body
        # A name nobody declared is still 404, after the wait.
        with pytest.raises(pex.ChannelClosedByBroker) as info:
            others["n2"].queue_declare(uid("nobody"), passive=True)
        assert info.value.reply_code == 404
    finally:
        for conn in conns.values():
            if conn.is_open:
                conn.close()
