"""`merpati server --workers 2` as a real process: one AMQP and management port shared by two
workers (SO_REUSEPORT), client-local queues, messages across workers, a killed worker restarted
with its queues, and one SIGTERM stopping everything."""

from __future__ import annotations

import os
import signal
import time

import pika
import pytest

from tests.support.http import call, q, samples, scrape
from tests.support.node import NodeProcess, PortClash
from tests.support.workers import WorkersProcess, pid_runs

CONNECTIONS = 12  # all on one worker by chance: 2 * 2**-12


@pytest.fixture(scope="module")
def host():
    w = WorkersProcess(2).start(timeout=0, wait=False)
    w.wait_ready(timeout=30)
    w._started_once = True
    yield w
    w.discard()


def connect(w: WorkersProcess) -> pika.BlockingConnection:
    return pika.BlockingConnection(pika.URLParameters(w.url))


def queue_nodes(w: WorkersProcess, *names: str) -> dict[str, str]:
    """Each queue's leader, once the worker answering knows every queue in `names`: the API's
    worker may apply a declaration a moment after the worker that was asked to make it."""
    deadline = time.monotonic() + 5
    while True:
        status, body = call(w.management_url, "GET", "/api/queues")
        assert status == 200
        nodes = {qu["name"]: qu["node"] for qu in body}
        if all(n in nodes for n in names) or time.monotonic() > deadline:
            return nodes
        time.sleep(0.05)


def worker_of(w: WorkersProcess, conn: pika.BlockingConnection, tag: str) -> str:
    """The worker a connection landed on: where its exclusive queue lives (exclusive queues
    always stay with their connection)."""
    ch = conn.channel()
    ch.queue_declare(f"where-{tag}", exclusive=True)
    return queue_nodes(w, f"where-{tag}")[f"where-{tag}"]


def connections_on_each_worker(w: WorkersProcess) -> dict[str, pika.BlockingConnection]:
    """One open connection on each worker, by worker id (connections land where the kernel
    sends them, so open until both are seen)."""
    found: dict[str, pika.BlockingConnection] = {}
    spare = []
    for i in range(40):
        conn = connect(w)
        node = worker_of(w, conn, f"pick{time.monotonic_ns()}-{i}")
        if node in found:
            spare.append(conn)
        else:
            found[node] = conn
        if len(found) == w.count:
            break
    for conn in spare:
        conn.close()
    assert len(found) == w.count, f"connections reached only {sorted(found)}"
    return found


def test_connections_spread_over_the_workers_and_client_local_queues_stay_with_them(host):
    conns = [connect(host) for _ in range(CONNECTIONS)]
    try:
        for i, conn in enumerate(conns):
            ch = conn.channel()
            ch.queue_declare(f"mine-{i}", exclusive=True)
            ch.queue_declare(f"local-{i}", durable=True)  # the workers' default: client-local
        nodes = queue_nodes(host, *(f"local-{i}" for i in range(CONNECTIONS)))
        workers = {nodes[f"mine-{i}"] for i in range(CONNECTIONS)}
        assert workers == {host.node_id(0), host.node_id(1)}
        for i in range(CONNECTIONS):
            assert nodes[f"local-{i}"] == nodes[f"mine-{i}"], i
        # Whichever worker answers, the API lists every worker's connections and consumers.
        for i, conn in enumerate(conns):
            conn.channel().basic_consume(f"local-{i}", lambda *a: None)
        for _ in range(6):
            status, listed = call(host.management_url, "GET", "/api/connections")
            assert status == 200 and len(listed) == CONNECTIONS
            assert {c["node"] for c in listed} == workers
            status, consumers = call(host.management_url, "GET", "/api/consumers")
            assert status == 200
            assert {c["queue"]["name"] for c in consumers} == {
                f"local-{i}" for i in range(CONNECTIONS)
            }
        # Each worker's own metrics port counts its own connections: one target per worker.
        counts = [samples(scrape(host.metrics_url_of(i)))["rabbitmq_connections"] for i in range(2)]
        assert sum(counts) >= CONNECTIONS and all(counts)
    finally:
        for conn in conns:
            conn.close()


def test_any_worker_closes_a_connection_of_any_worker(host):
    conns = [connect(host) for _ in range(6)]
    try:
        status, listed = call(host.management_url, "GET", "/api/connections")
        assert status == 200 and len(listed) == 6
        for c in listed:  # each DELETE lands on a worker the kernel picks, this one's or not
            status, _ = call(host.management_url, "DELETE", f"/api/connections/{q(c['name'])}")
            assert status == 204, c
        deadline = time.monotonic() + 5
        while any(conn.is_open for conn in conns) and time.monotonic() < deadline:
            for conn in conns:
                if conn.is_open:
                    try:
                        conn.process_data_events(0.05)
                    except pika.exceptions.ConnectionClosedByBroker as e:
                        assert e.reply_code == 320 and "Closed via management" in e.reply_text
        assert not any(conn.is_open for conn in conns)
    finally:
        for conn in conns:
            if conn.is_open:
                conn.close()


def test_balanced_puts_each_queue_on_the_worker_leading_fewer(host):
    # Earlier tests' exclusive queues go with their connections: wait until every worker's
    # view has them gone, so the counts below are the ones placement sees.
    deadline = time.monotonic() + 5
    while any(n.startswith(("mine-", "where-")) for n in queue_nodes(host)):
        assert time.monotonic() < deadline, queue_nodes(host)
        time.sleep(0.05)
    conn = connect(host)
    try:
        ch = conn.channel()
        for i in range(6):
            leaders = list(queue_nodes(host, *(f"bal-{j}" for j in range(i))).values())
            counts = {n: leaders.count(n) for n in (host.node_id(0), host.node_id(1))}
            ch.queue_declare(f"bal-{i}", arguments={"x-queue-leader-locator": "balanced"})
            placed = queue_nodes(host, f"bal-{i}")[f"bal-{i}"]
            assert counts[placed] == min(counts.values()), (i, counts, placed)
    finally:
        conn.close()


def test_an_unknown_locator_is_refused_by_declarations_and_policies(host):
    conn = connect(host)
    try:
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
            conn.channel().queue_declare("bad", arguments={"x-queue-leader-locator": "nearest"})
        assert e.value.reply_code == 406
        assert "expected client-local or balanced, got 'nearest'" in e.value.reply_text
    finally:
        conn.close()
    status, body = call(
        host.management_url,
        "PUT",
        f"/api/policies/{q('/')}/bad",
        {"pattern": ".*", "definition": {"queue-leader-locator": "nearest"}},
    )
    assert status == 400 and "not a valid queue-leader-locator" in body["reason"]


def test_definitions_with_an_unknown_locator_policy_are_refused_whole(host):
    body = {
        "policies": [
            {
                "vhost": "/",
                "name": "bad-def",
                "pattern": ".*",
                "definition": {"queue-master-locator": "balanced"},
            }
        ]
    }
    status, answer = call(host.management_url, "POST", "/api/definitions", body)
    assert status == 400
    assert "policy 'bad-def' in vhost '/'" in answer["reason"]
    assert "not a valid queue-master-locator value" in answer["reason"]


def test_a_lone_node_does_not_share_the_workers_port(host):
    # SO_REUSEPORT is the workers' only: a node on its own refuses a port that is taken.
    lone = NodeProcess()
    lone.port = host.port
    lone._started_once = True  # no retry on other ports: the clash is the point
    with pytest.raises(PortClash):
        lone.start(timeout=20)
    assert not lone.alive()
    assert f"{host.port}): address already in use" in lone.log()


def test_sighup_is_passed_on_and_leaves_supervisor_and_workers_running(host):
    pids = host.live_worker_pids()
    assert host.proc is not None
    host.proc.send_signal(signal.SIGHUP)
    time.sleep(0.5)
    assert host.alive() and host.live_worker_pids() == pids
    assert "SIGHUP: passed on to the workers" in host.log()


def test_a_message_published_through_one_worker_is_consumed_through_the_other(host):
    by_worker = connections_on_each_worker(host)
    (a, conn_a), (b, conn_b) = sorted(by_worker.items())
    try:
        conn_a.channel().queue_declare("across", durable=True)
        assert queue_nodes(host, "across")["across"] == a
        pub = conn_b.channel()
        pub.confirm_delivery()
        pub.basic_publish("", "across", b"from " + b.encode())
        got = None
        deadline = time.monotonic() + 10
        ch = conn_b.channel()  # consumed through b as well: the queue lives on a
        while got is None and time.monotonic() < deadline:
            _, _, got = ch.basic_get("across", auto_ack=True)
        assert got == b"from " + b.encode()
        # And the other way round: published on a, fetched through a's peer b.
        conn_a.channel().basic_publish("", "across", b"again")
        deadline = time.monotonic() + 10
        got = None
        while got is None and time.monotonic() < deadline:
            _, _, got = ch.basic_get("across", auto_ack=True)
        assert got == b"again"
        # The workers forwarded through each other's Unix socket (local_link), not gRPC: each
        # socket accepted a connection (the kernel lists accepted sockets under the path too).
        for node in (a, b):
            path = host.data_dir / "links" / f"{node}.sock"
            assert oct(path.stat().st_mode & 0o777) == "0o600"
            assert unix_sockets_at(path) >= 2, f"nothing connected to {path}"
    finally:
        for conn in by_worker.values():
            conn.close()


def unix_sockets_at(path) -> int:
    with open("/proc/net/unix") as f:
        return sum(1 for line in f if line.split()[-1] == str(path))


def test_quorum_queues_are_led_by_the_declaring_connections_worker(host):
    by_worker = connections_on_each_worker(host)
    try:
        for node, conn in by_worker.items():
            name = f"qq-{node}"
            conn.channel().queue_declare(name, durable=True, arguments={"x-queue-type": "quorum"})
            assert queue_nodes(host, name)[name] == node
            status, body = call(host.management_url, "GET", f"/api/queues/{q('/')}/{q(name)}")
            assert status == 200 and body["type"] == "quorum"
            assert sorted(body["members"]) == [host.node_id(0), host.node_id(1)]
        # The old master locator is a classic queue argument, refused on quorum queues as in
        # RabbitMQ; the leader locator is taken.
        conn = next(iter(by_worker.values()))
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
            conn.channel().queue_declare(
                "qq-old",
                durable=True,
                arguments={"x-queue-type": "quorum", "x-queue-master-locator": "client-local"},
            )
        assert e.value.reply_code == 406
    finally:
        for node, conn in by_worker.items():
            if conn.is_open:
                # Gone before the SIGTERM test: the last worker to stop would wait for another
                # replica to hand their leadership to (a node's stop gives that 5 s).
                conn.channel().queue_delete(f"qq-{node}")
                conn.close()


def test_a_node_setting_through_the_shared_port_reaches_every_worker(host):
    """set_vm_memory_high_watermark reaches one worker by chance; the host's others follow
    (before the tests that kill and stop the workers: this one needs them all running)."""
    status, body = call(
        host.management_url,
        "PUT",
        "/api/merpati/node/memory-high-watermark",
        {"limit": "3GB", "absolute": True},
    )
    assert status == 200, body
    deadline = time.monotonic() + 10
    for i in range(host.count):
        while True:
            figures = samples(scrape(host.metrics_url_of(i)))
            if figures.get("rabbitmq_resident_memory_limit_bytes") == 3 * 1000**3:
                break
            assert time.monotonic() < deadline, f"worker {i} kept its watermark"
            time.sleep(0.1)


def test_a_killed_worker_is_restarted_and_rejoins_with_its_queues(host):
    by_worker = connections_on_each_worker(host)
    victim = host.node_id(1)
    conn = by_worker[victim]
    ch = conn.channel()
    ch.queue_declare("kept", durable=True)
    assert queue_nodes(host, "kept")["kept"] == victim
    ch.confirm_delivery()
    for i in range(20):
        ch.basic_publish(
            "", "kept", f"m{i}".encode(), pika.BasicProperties(delivery_mode=2), mandatory=True
        )
    for c in by_worker.values():
        c.close()
    old = next(w["pid"] for w in host.workers() if w["node_id"] == victim)
    readies = host.ready_count(victim)
    os.kill(old, signal.SIGKILL)

    deadline = time.monotonic() + 20
    while host.ready_count(victim) == readies and time.monotonic() < deadline:
        time.sleep(0.1)
    assert host.ready_count(victim) > readies, host.log()
    assert f"({victim}, pid {old}) died" in host.log() and "killed by SIGKILL" in host.log()
    new = next(w["pid"] for w in host.workers() if w["node_id"] == victim)
    assert new != old and pid_runs(new, str(host.data_dir))

    # Back in the cluster, leading its queue again with every message (asked of the API, and
    # consumed through whichever worker the kernel picks).
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        status, body = call(host.management_url, "GET", f"/api/queues/{q('/')}/kept")
        if status == 200 and body.get("messages") == 20:
            break
        time.sleep(0.2)
    assert (status, body.get("node"), body.get("messages")) == (200, victim, 20), body
    # The other worker serves the queue once its pings find the restarted one up again (until
    # then it answers 404, "on node ..., which is down", as for any node that is away).
    bodies: list[str] = []
    deadline = time.monotonic() + 10
    conn = connect(host)
    try:
        ch = conn.channel()
        while len(bodies) < 20 and time.monotonic() < deadline:
            try:
                _, _, got = ch.basic_get("kept", auto_ack=True)
            except pika.exceptions.ChannelClosedByBroker as e:
                assert e.reply_code == 404 and "which is down" in e.reply_text, e
                time.sleep(0.1)
                ch = conn.channel()
                continue
            if got is not None:
                bodies.append(got.decode())
    finally:
        conn.close()
    assert bodies == [f"m{i}" for i in range(20)]


def test_one_sigterm_stops_every_worker_in_order(host):
    # Last in this module: it ends the host.
    pids = host.live_worker_pids()
    assert len(pids) == 2
    code = host.stop(signal.SIGTERM, timeout=25)
    assert code == 0, host.log()
    assert host.live_worker_pids() == [] and not any(pid_runs(p, "") for p in pids)
    log = host.log()
    assert log.index(f"stopping worker 1 ({host.node_id(1)}") < log.index(
        f"stopping worker 0 ({host.node_id(0)}"
    )
    assert f"Merpati node {host.node_id(0)} stopped" in log
    assert f"Merpati node {host.node_id(1)} stopped" in log
    assert "all workers stopped" in log
