"""`merpati server --workers N` as a real process for tests: the supervisor is the NodeProcess,
its workers are found through the `workers.json` it writes."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import time
from pathlib import Path
from typing import Any

from .node import NodeProcess


def _ephemeral_floor() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_run(count: int) -> int:
    """A free port P with P+1 .. P+count-1 free too (a worker range), below the ephemeral range.

    Not from the ephemeral range as free_port's are: a worker's cluster and Raft ports are
    connected to by the other workers before they listen, and a connection to a port nobody
    listens on can get that very port as its source port (TCP self-connect), holding it for
    good; the worker then cannot bind it however often it is restarted."""
    top = _ephemeral_floor() - count
    for _ in range(100):
        base = random.randrange(10000, top)
        held = []
        try:
            for port in range(base, base + count):
                sock = socket.socket()
                held.append(sock)
                sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for sock in held:
                sock.close()
        return base
    raise RuntimeError(f"no {count} free ports in a row")


def pid_runs(pid: int, marker: str) -> bool:
    """`pid` is alive and its command line names `marker` (not a reused pid of another)."""
    try:
        return marker in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


class WorkersProcess(NodeProcess):
    """A supervisor of `count` workers on loopback, sharing one AMQP and management port."""

    def __init__(self, count: int = 2, *extra: str, **kw: Any) -> None:
        super().__init__(*extra, **kw)
        self.count = count
        self.metrics_port = free_run(count)
        self.cluster_port = free_run(2 * count)
        self.extra = [
            "--workers",
            str(count),
            "--cluster-port",
            str(self.cluster_port),
            "--raft-port",
            "0",  # the default layout: worker i's Raft port is its cluster port + 1
            *self.extra,
        ]

    @property
    def data_dir(self) -> Path:
        return self.dir / "data"

    def metrics_url_of(self, index: int) -> str:
        return f"http://{self.host}:{self.metrics_port + index}"

    def node_id(self, index: int) -> str:
        return f"test-w{index}@{self.port}"

    def workers(self) -> list[dict[str, Any]]:
        return json.loads((self.data_dir / "workers.json").read_text())["workers"]

    def ready_count(self, node_id: str = "") -> int:
        text = self.log_path.read_bytes()[self._offset :].decode(errors="replace")
        return sum(
            1
            for line in text.splitlines()
            if " ready: " in line and (not node_id or f"node {node_id} ready" in line)
        )

    def wait_ready(self, timeout: float = 30.0) -> WorkersProcess:
        """Every worker logged its ready line (or fail with the log if the supervisor exits)."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"supervisor exited with {self.proc.returncode}:\n{self.log()}")
            if all(self.ready_count(self.node_id(i)) for i in range(self.count)):
                return self
            time.sleep(0.05)
        raise RuntimeError(f"workers not ready in {timeout}s:\n{self.log()}")

    def live_worker_pids(self) -> list[int]:
        """Worker processes of this supervisor still running (by their data directory)."""
        marker = str(self.data_dir)
        out = []
        with contextlib.suppress(OSError, ValueError):
            for w in self.workers():
                if w["pid"] and pid_runs(w["pid"], marker):
                    out.append(w["pid"])
        return out

    def discard(self, keep: bool = False) -> None:
        # Killing the supervisor alone would leave its workers to stop on PR_SET_PDEATHSIG:
        # kill them too, so that nothing outlives the test.
        pids = self.live_worker_pids()
        super().discard(keep)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
