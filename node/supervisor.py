"""`merpati server --workers N`: N node processes on this host as one cluster, one supervisor.

A node is one Python process, so it uses one core; with `--workers N` (or `auto`, one per CPU)
the `merpati server` process runs no broker itself. It starts N ordinary `merpati server`
processes, the workers, and watches them:

* Each worker is a full cluster member with a stable identity derived from its index i, so a
  restarted worker is the same member again with its own data: node id `<name>-w<i>@<host>`
  (or `<node-id>-w<i>` for an id without `@`), data directory `<data-dir>/w<i>`, cluster (gRPC)
  and Raft ports derived from the configured ones (`plan_workers`). The workers are each other's
  static `--peers`, on loopback, so they form the cluster on their own like any static cluster.
* They share the client ports, AMQP, AMQPS and the management API, each opening them with
  SO_REUSEPORT (`--reuse-port`), so the kernel spreads new connections over the workers that are
  up. The management API answers from whichever worker the kernel picks; what it serves from the
  metadata (queues, exchanges, bindings, users, policies, nodes) is the cluster's, the same from
  every worker. Metrics are per node, as in RabbitMQ, so each worker keeps a metrics port of its
  own, the configured one plus i: one Prometheus target per worker, as one per node of a cluster.
* Queues a connection declares go to that connection's worker unless told otherwise
  (`--queue-leader-locator client-local` is the workers' default): connections are spread by
  the kernel, so queues are spread with them, and a client's publishes and deliveries mostly
  stay in its own worker instead of crossing over gRPC.
* A worker that exits is started again (after 0.5 s, doubling up to 30 s while it keeps dying
  within `STABLE` seconds of its start), rejoins the cluster as the same member and recovers its
  queues from its data directory. A worker exiting with status 2 (its configuration is refused,
  as every worker's would be) stops them all instead.
* SIGHUP is passed on to every worker (a node reloads its certificates on it).
* SIGTERM or SIGINT stops the workers one at a time, highest index first, each with SIGTERM (a
  node's clean stop: quorum queue leadership handed over, clients closed, store committed),
  waiting for each; one that does not stop within `STOP_TIMEOUT` is killed. Workers are in
  process groups of their own, so a Ctrl-C in a terminal reaches the supervisor only and they
  still stop in order; each is told by the kernel (PR_SET_PDEATHSIG) to stop should the
  supervisor itself die without stopping them.

The supervisor writes `<data-dir>/workers.json` (each worker's node id, pid, data directory and
ports) whenever a worker starts, for operators and tests to find a given worker's process.

This module imports nothing of the broker: the workers are separate programs.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .config import Config, ConfigError

log = logging.getLogger("merpati.supervisor")

FIRST_RESTART_DELAY = 0.5  # seconds before a dead worker is started again
MAX_RESTART_DELAY = 30.0
# A worker that ran this long before it exited is restarted after the first delay again.
STABLE = 30.0
# Seconds a worker has to stop after SIGTERM before it is killed: a node's own stop waits up to
# 5 s for quorum leadership to move and 10 s for queue handovers, plus closing its clients.
STOP_TIMEOUT = 30.0
# Exit status of `merpati server` when its configuration is refused (node/cli.py).
CONFIG_REFUSED = 2
POLL = 0.1  # seconds between looks at the workers

PR_SET_PDEATHSIG = 1  # linux/prctl.h


@dataclass(frozen=True)
class WorkerPlan:
    """What makes worker `index` the same cluster member at every start."""

    index: int
    node_id: str
    data_dir: str
    cluster_port: int
    raft_port: int
    metrics_port: int  # 0: no metrics listener


def worker_node_id(node_id: str, index: int) -> str:
    """`merpati@host` -> `merpati-w0@host`: the host part stays the host, as RabbitMQ's names."""
    name, at, host = node_id.partition("@")
    return f"{name}-w{index}{at}{host}"


def plan_workers(cfg: Config, count: int) -> list[WorkerPlan]:
    """Each worker's identity and ports, or ConfigError when they cannot be laid out.

    Cluster ports count up from --cluster-port. With the default Raft port (cluster port + 1)
    they go in steps of two, worker i on cluster port base + 2i and Raft port base + 2i + 1; a
    --raft-port given explicitly counts up from itself, the cluster ports then in steps of one.
    Either way every worker's Raft port is its cluster port plus the same offset, which is how
    cluster/membership.py derives a member's Raft address from its --peers entry."""
    if cfg.peers:
        raise ConfigError(
            "--workers with --peers is not supported: the workers are the members of their own "
            "cluster on this host (a cluster of several hosts each running workers is not "
            "implemented yet); run single nodes with --peers instead"
        )
    base = cfg.cluster_port
    if cfg.raft_port:
        step, raft_base = 1, cfg.raft_port
    else:
        step, raft_base = 2, base + 1
    node_id = cfg.resolved_node_id()
    plans = [
        WorkerPlan(
            index=i,
            node_id=worker_node_id(node_id, i),
            data_dir=str(Path(cfg.data_dir) / f"w{i}"),
            cluster_port=base + step * i,
            raft_port=raft_base + step * i,
            metrics_port=cfg.metrics_port + i if cfg.metrics_port else 0,
        )
        for i in range(count)
    ]
    shared = {
        "amqp-port": cfg.amqp_port,
        "amqps-port": cfg.amqps_port if cfg.tls_cert else 0,
        "management-port": cfg.management_port,
    }
    owners: dict[int, str] = {}
    for what, port in shared.items():
        if port:
            owners[port] = what
    for p in plans:
        for what, port in (
            ("cluster port", p.cluster_port),
            ("Raft port", p.raft_port),
            ("metrics port", p.metrics_port),
        ):
            if not port:
                continue
            if port > 65535:
                raise ConfigError(f"workers: worker {p.index}'s {what} would be {port}")
            if port in owners:
                raise ConfigError(
                    f"workers: worker {p.index}'s {what} {port} is also the {owners[port]}; "
                    "with N workers the cluster ports take 2N ports from --cluster-port (N from "
                    "--cluster-port and N from --raft-port when that is set) and the metrics "
                    "ports N from --metrics-port"
                )
            owners[port] = f"{what} of worker {p.index}"
    return plans


def peers_of(plans: list[WorkerPlan]) -> str:
    return ",".join(f"{p.node_id}=127.0.0.1:{p.cluster_port}" for p in plans)


def worker_argv(
    server_args: list[str],
    plan: WorkerPlan,
    peers: str,
    locator: str,
    link_dir: str = "",
    host_settings: str = "",
) -> list[str]:
    """The command of one worker: the supervisor's own `server` arguments, then the worker's.
    Later flags win in argparse and flags win over the environment and the config file, so
    whatever the user set reaches every worker and only these few differ."""
    argv = [
        sys.executable,
        "-m",
        "merpati.node",
        "server",
        *server_args,
        "--workers",
        "1",
        "--reuse-port",
        "true",
        "--node-id",
        plan.node_id,
        "--data-dir",
        plan.data_dir,
        "--cluster-port",
        str(plan.cluster_port),
        "--raft-port",
        str(plan.raft_port),
        "--metrics-port",
        str(plan.metrics_port),
        "--peers",
        peers,
    ]
    if locator:
        argv += ["--queue-leader-locator", locator]
    if link_dir:
        argv += ["--local-link-dir", link_dir]
    if host_settings:
        argv += ["--host-settings", host_settings]
    return argv


def _in_own_group_dying_with_parent() -> None:
    """Run in the worker between fork and exec (no threads exist in the supervisor)."""
    os.setpgid(0, 0)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass  # not Linux: a supervisor killed with SIGKILL leaves its workers running


def describe_exit(status: int) -> str:
    if status < 0:
        try:
            return f"killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    return f"exit status {status}"


class Worker:
    def __init__(self, plan: WorkerPlan, argv: list[str]) -> None:
        self.plan = plan
        self.argv = argv
        self.proc: subprocess.Popen | None = None
        self.started_at = 0.0
        self.restart_at: float | None = None  # when a dead worker is due to start again
        self.delay = FIRST_RESTART_DELAY

    def start(self) -> None:
        Path(self.plan.data_dir).mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            self.argv, stdin=subprocess.DEVNULL, preexec_fn=_in_own_group_dying_with_parent
        )
        self.started_at = time.monotonic()
        self.restart_at = None
        log.info(
            "worker %d (%s) started, pid %d", self.plan.index, self.plan.node_id, self.proc.pid
        )

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None


class Supervisor:
    def __init__(self, cfg: Config, server_args: list[str], count: int) -> None:
        self.plans = plan_workers(cfg, count)
        peers = peers_of(self.plans)
        locator = "" if cfg.queue_leader_locator else "client-local"
        self.data_dir = Path(cfg.data_dir)
        # The workers forward to each other through Unix sockets here (local_link), not gRPC.
        self.link_dir = self.data_dir / "links"
        # Node-local settings changed at run time, for every worker (node/host_settings.py).
        self.host_settings = self.data_dir / "host-settings.json"
        self.workers = [
            Worker(
                p,
                worker_argv(
                    server_args, p, peers, locator, str(self.link_dir), str(self.host_settings)
                ),
            )
            for p in self.plans
        ]
        self.stopping = False
        self.status = 0

    def _hangup(self, signum: int, frame: Any) -> None:
        """SIGHUP reloads a node's certificates (AMQPS, HTTPS, the cluster's): every worker
        gets it, and the supervisor is not ended by it, which would stop them all."""
        log.info("SIGHUP: passed on to the workers")
        for w in self.workers:
            if w.pid is not None and w.proc is not None:
                w.proc.send_signal(signal.SIGHUP)

    def _signalled(self, signum: int, frame: Any) -> None:
        if not self.stopping:
            log.info("%s: stopping the workers", signal.Signals(signum).name)
        self.stopping = True

    def _write_pids(self) -> None:
        body = {
            "supervisor": os.getpid(),
            "workers": [{**asdict(w.plan), "pid": w.pid} for w in self.workers],
        }
        path = self.data_dir / "workers.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(body, indent=1) + "\n")
        os.replace(tmp, path)

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._signalled)
        signal.signal(signal.SIGHUP, self._hangup)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.link_dir.mkdir(mode=0o700, exist_ok=True)
        # Settings made at run time last until the host's Merpati restarts (as rabbitmqctl's).
        self.host_settings.unlink(missing_ok=True)
        if (self.data_dir / "raft").is_dir() or (self.data_dir / "messages.db").exists():
            log.warning(
                "%s holds a single node's data, which the workers do not use (each has its own "
                "directory w0, w1, ... in it)",
                self.data_dir,
            )
        log.info(
            "supervising %d workers (%s)",
            len(self.workers),
            ", ".join(w.plan.node_id for w in self.workers),
        )
        for w in self.workers:
            w.start()
        self._write_pids()
        while not self.stopping:
            self._watch()
            time.sleep(POLL)
        self._stop_all()
        return self.status

    def _watch(self) -> None:
        now = time.monotonic()
        started = False
        for w in self.workers:
            if w.restart_at is not None:
                if now >= w.restart_at and not self.stopping:
                    w.start()
                    started = True
                continue
            assert w.proc is not None
            status = w.proc.poll()
            if status is None:
                continue
            plan = w.plan
            if status == CONFIG_REFUSED:
                log.error(
                    "worker %d (%s, pid %d) refused its configuration (%s): stopping",
                    plan.index,
                    plan.node_id,
                    w.proc.pid,
                    describe_exit(status),
                )
                self.status = CONFIG_REFUSED
                self.stopping = True
                return
            ran = now - w.started_at
            w.delay = FIRST_RESTART_DELAY if ran >= STABLE else w.delay
            log.warning(
                "worker %d (%s, pid %d) died after %.1f s (%s); starting it again in %.1f s",
                plan.index,
                plan.node_id,
                w.proc.pid,
                ran,
                describe_exit(status),
                w.delay,
            )
            w.restart_at = now + w.delay
            w.delay = min(MAX_RESTART_DELAY, w.delay * 2)
        if started:
            self._write_pids()

    def _stop_all(self) -> None:
        for w in reversed(self.workers):
            proc = w.proc
            if proc is None or proc.poll() is not None:
                continue
            log.info("stopping worker %d (%s, pid %d)", w.plan.index, w.plan.node_id, proc.pid)
            proc.send_signal(signal.SIGTERM)
            try:
                status = proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                log.error(
                    "worker %d (%s, pid %d) did not stop within %.0f s: killing it",
                    w.plan.index,
                    w.plan.node_id,
                    proc.pid,
                    STOP_TIMEOUT,
                )
                proc.kill()
                status = proc.wait()
            if status != 0:
                log.warning("worker %d stopped with %s", w.plan.index, describe_exit(status))
        self._write_pids()
        log.info("all workers stopped")


def run(cfg: Config, server_args: list[str]) -> int:
    """Supervise cfg.resolved_workers() workers until SIGTERM or SIGINT; the exit status."""
    try:
        supervisor = Supervisor(cfg, server_args, cfg.resolved_workers())
    except ConfigError as e:
        print(f"merpati: {e}", file=sys.stderr)
        return CONFIG_REFUSED
    return supervisor.run()
