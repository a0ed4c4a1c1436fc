"""node.supervisor without processes: the --workers and --queue-leader-locator settings, each
worker's identity and ports, and the command line a worker gets."""

from __future__ import annotations

import os
import signal
import sys
import time

import pytest

from merpati.node.config import FLAGS, ConfigError, load
from merpati.node.supervisor import (
    CONFIG_REFUSED,
    FIRST_RESTART_DELAY,
    Supervisor,
    describe_exit,
    peers_of,
    plan_workers,
    worker_argv,
    worker_node_id,
)


def cfg(environ: dict[str, str] | None = None, **given: object):
    flags = {name: None for name in FLAGS}
    flags.update(given)
    return load(flags, environ=environ or {})


# -- settings -----------------------------------------------------------------------------------


def test_workers_default_to_one_and_take_a_number_from_flag_env_and_file(tmp_path):
    assert cfg().resolved_workers() == 1
    assert cfg(workers="4").resolved_workers() == 4
    assert cfg({"MERPATI_WORKERS": "3"}).resolved_workers() == 3
    toml = tmp_path / "m.toml"
    toml.write_text("workers = 6\n")  # a TOML integer, not only a string
    assert cfg(config=str(toml)).resolved_workers() == 6


def test_workers_auto_is_the_cpus_this_process_may_use():
    assert cfg(workers="auto").resolved_workers() == len(os.sched_getaffinity(0))


@pytest.mark.parametrize("value", ["0", "-2", "many", "1.5", ""])
def test_a_workers_value_that_is_no_count_is_refused(value):
    with pytest.raises(ConfigError, match="workers must be"):
        cfg(workers=value)


def test_queue_leader_locator_setting():
    assert cfg().resolved_queue_leader_locator() == "balanced"
    assert cfg(queue_leader_locator="client-local").resolved_queue_leader_locator() == (
        "client-local"
    )
    with pytest.raises(ConfigError, match="queue-leader-locator must be client-local or balanced"):
        cfg(queue_leader_locator="random")


# -- each worker's identity and ports -----------------------------------------------------------


def test_worker_ids_keep_the_host_part_and_are_stable():
    assert worker_node_id("merpati@db1", 0) == "merpati-w0@db1"
    assert worker_node_id("rabbit", 3) == "rabbit-w3"


def test_default_raft_ports_interleave_with_the_cluster_ports(tmp_path):
    plans = plan_workers(
        cfg(node_id="m@h", data_dir=str(tmp_path), cluster_port="30000", metrics_port="40000"), 3
    )
    assert [(p.cluster_port, p.raft_port) for p in plans] == [
        (30000, 30001),
        (30002, 30003),
        (30004, 30005),
    ]
    assert [p.metrics_port for p in plans] == [40000, 40001, 40002]
    assert [p.node_id for p in plans] == ["m-w0@h", "m-w1@h", "m-w2@h"]
    assert [p.data_dir for p in plans] == [str(tmp_path / f"w{i}") for i in range(3)]
    assert peers_of(plans) == (
        "m-w0@h=127.0.0.1:30000,m-w1@h=127.0.0.1:30002,m-w2@h=127.0.0.1:30004"
    )


def test_an_explicit_raft_port_counts_up_from_itself_keeping_one_offset():
    plans = plan_workers(cfg(cluster_port="30000", raft_port="31000"), 3)
    assert [(p.cluster_port, p.raft_port) for p in plans] == [
        (30000, 31000),
        (30001, 31001),
        (30002, 31002),
    ]
    # cluster/membership.py derives every member's Raft port with one offset.
    assert {p.raft_port - p.cluster_port for p in plans} == {1000}


def test_metrics_off_stays_off_for_every_worker():
    assert {p.metrics_port for p in plan_workers(cfg(metrics_port="0"), 2)} == {0}


@pytest.mark.parametrize(
    "given,error",
    [
        # Raft ports counting up from 30001 run into the cluster ports counting up from 30000.
        (
            {"cluster_port": "30000", "raft_port": "30001"},
            "worker 1's cluster port 30001 is also the Raft port of worker 0",
        ),
        ({"cluster_port": "30000", "metrics_port": "30003"}, "is also the metrics port"),
        ({"cluster_port": "30000", "amqp_port": "30004"}, "is also the amqp-port"),
        ({"cluster_port": "65533"}, "would be 65536"),
    ],
)
def test_port_layouts_that_collide_are_refused(given, error):
    with pytest.raises(ConfigError, match=error):
        plan_workers(cfg(**given), 3)


def test_peers_with_workers_is_refused_with_the_reason():
    with pytest.raises(ConfigError, match="--workers with --peers is not supported"):
        plan_workers(cfg(peers="a=10.0.0.1:25672,b=10.0.0.2:25672"), 2)


# -- the command a worker runs ------------------------------------------------------------------


def test_a_worker_gets_the_supervisors_arguments_then_its_own():
    plans = plan_workers(cfg(node_id="m@h", cluster_port="30000", metrics_port="40000"), 2)
    user = ["--amqp-port", "5999", "--workers", "2", "--node-id", "m@h"]
    argv = worker_argv(user, plans[1], peers_of(plans), "client-local")
    tail = argv[argv.index("server") + 1 :]
    assert tail[: len(user)] == user
    ours = dict(zip(tail[len(user) :: 2], tail[len(user) + 1 :: 2], strict=True))
    assert ours == {
        "--workers": "1",  # later flags win: a worker never supervises
        "--reuse-port": "true",
        "--node-id": "m-w1@h",
        "--data-dir": plans[1].data_dir,
        "--cluster-port": "30002",
        "--raft-port": "30003",
        "--metrics-port": "40001",
        "--peers": peers_of(plans),
        "--queue-leader-locator": "client-local",
    }
    # The worker loads as a single node with these settings, whatever the environment says.
    parsed = {name: None for name in FLAGS} | {k[2:].replace("-", "_"): v for k, v in ours.items()}
    worker = load(parsed, environ={"MERPATI_WORKERS": "8"})
    assert worker.resolved_workers() == 1 and worker.reuse_port


def test_a_locator_the_user_set_is_left_to_reach_the_worker_untouched():
    plan = plan_workers(cfg(), 2)[0]
    assert "--queue-leader-locator" not in worker_argv([], plan, "", "")


def test_exit_descriptions_name_the_signal():
    assert describe_exit(-signal.SIGKILL) == "killed by SIGKILL"
    assert describe_exit(1) == "exit status 1"


# -- watching workers (tiny stand-in processes, no nodes) ---------------------------------------


def supervisor_of(tmp_path, code: str) -> Supervisor:
    sup = Supervisor(cfg(data_dir=str(tmp_path), metrics_port="0"), [], 2)
    for w in sup.workers:
        w.argv = [sys.executable, "-c", code]
    return sup


def watch_until(sup: Supervisor, done, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline
        sup._watch()
        time.sleep(0.02)


def test_a_dying_worker_is_started_again_with_a_doubling_delay(tmp_path):
    sup = supervisor_of(tmp_path, "import sys; sys.exit(1)")
    w = sup.workers[0]
    w.start()
    sup.workers[1].restart_at = float("inf")  # only worker 0 takes part
    first = w.proc.pid
    watch_until(sup, lambda: w.restart_at is not None)
    assert w.restart_at - time.monotonic() <= FIRST_RESTART_DELAY and w.delay == 2 * (
        FIRST_RESTART_DELAY
    )
    watch_until(sup, lambda: w.proc.pid != first)  # started again once the delay passed
    watch_until(sup, lambda: w.restart_at is not None)
    assert w.delay == 4 * FIRST_RESTART_DELAY  # died again at once: the next wait is longer
    assert not sup.stopping


def test_a_worker_refusing_its_configuration_stops_the_supervisor_with_its_status(tmp_path):
    sup = supervisor_of(tmp_path, "import sys; sys.exit(2)")
    for w in sup.workers:
        w.start()
    watch_until(sup, lambda: sup.stopping)
    assert sup.status == CONFIG_REFUSED
    sup._stop_all()
    assert all(w.proc.poll() is not None for w in sup.workers)


def test_stop_all_stops_the_workers_highest_index_first(tmp_path):
    # Each stand-in records when it got SIGTERM, then exits.
    code = (
        "import signal, sys, time, pathlib\n"
        "def stop(*_):\n"
        "    pathlib.Path(sys.argv[1]).write_text(str(time.monotonic()))\n"
        "    sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, stop)\n"
        "time.sleep(30)\n"
    )
    sup = supervisor_of(tmp_path, code)
    for i, w in enumerate(sup.workers):
        w.argv.append(str(tmp_path / f"stopped-{i}"))
        w.start()
    time.sleep(0.3)  # the stand-ins install their handlers
    sup._stop_all()
    stopped = [float((tmp_path / f"stopped-{i}").read_text()) for i in range(2)]
    assert stopped[1] < stopped[0]
    assert [w.proc.returncode for w in sup.workers] == [0, 0]
