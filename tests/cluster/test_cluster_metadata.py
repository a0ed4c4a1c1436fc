"""A three-node cluster shares one metadata: declarations on any node, seen on every node."""

from __future__ import annotations

import signal
import time

import pika.exceptions as pex
import pytest

from tests.support.clients import connect
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
