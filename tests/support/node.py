"""Start and stop real `merpati server` processes for tests.

Why not pytest-xprocess (it was a declared test dependency that nothing used, and was removed):
xprocess manages a few long-lived, named processes per session, reused across runs, each started
and waited for one at a time through `ensure()`. These tests need what it does not give: many
short-lived nodes per test (a fresh three-node cluster per test), started together and then
waited for together (a cluster node is only ready once a majority is up), new ports when a
picked port was taken meanwhile (PortClash), SIGKILL and other signals on the exact process, and
a restart that keeps ports, data dir and log (appended, each run read from its own offset). All
of that lives here in ~150 lines over subprocess.Popen; wrapping xprocess around it would add a
layer without removing any of it.

Temporary directories: each NodeProcess makes one (data dir, log, config) and registers itself;
`discard()` kills what is still running and removes the directory. tests/conftest.py discards the
nodes a test made when it ends, keeping the directories of a failed test (its node.log and
store are what one reads to see why) and listing them at the end of the session; set
MERPATI_TEST_KEEP_DIRS=1 to keep every directory.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

KEEP_DIRS = "MERPATI_TEST_KEEP_DIRS"

# Every NodeProcess whose directory still exists, by serial number (creation order).
_nodes: dict[int, NodeProcess] = {}
_serial = 0
kept_dirs: list[Path] = []  # directories left behind on purpose (reported by tests/conftest.py)


def next_serial() -> int:
    """The serial the next NodeProcess will get: `discard_since` it to clean up a test's nodes."""
    return _serial


def discard_since(serial: int, keep: bool = False) -> None:
    """Discard every node created since `next_serial()` returned `serial`."""
    for n in [n for k, n in sorted(_nodes.items()) if k >= serial]:
        n.discard(keep)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


PORT_CLASH = b"address already in use"


class PortClash(RuntimeError):
    """A port picked as free was taken before the node bound it (another process got there)."""


class NodeProcess:
    """One node process on loopback; `extra` flags and a TOML `config` text are optional.

    `host` is the address the node binds and clients reach it at (default loopback); `wrap` is a
    command prefix the node runs under, e.g. `ip netns exec NS` (tests/support/netns.py): it must
    exec the node, so that the process signalled is the node itself."""

    def __init__(
        self,
        *extra: str,
        config: str | None = None,
        env: dict[str, str] | None = None,
        host: str = "127.0.0.1",
        wrap: tuple[str, ...] | list[str] = (),
    ) -> None:
        self.host = host
        self.wrap = list(wrap)
        self.port = free_port()
        self.raft_port = free_port()
        # Free ports for the HTTP listeners too, so parallel nodes never clash on 15672/15692.
        self.metrics_port = free_port()
        self.management_port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="merpati-test-"))
        global _serial
        self.serial, _serial = _serial, _serial + 1
        _nodes[self.serial] = self
        self.extra = list(extra)
        self.config = config
        self.env = env or {}
        self.proc: subprocess.Popen | None = None
        self.log_path = self.dir / "node.log"
        self._started_once = False

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@{self.host}:{self.port}/"

    def start(self, timeout: float = 15.0, wait: bool = True) -> NodeProcess:
        """Start the node; a first start whose free ports were taken meanwhile retries on others."""
        for attempt in range(3):
            try:
                return self._start(timeout, wait)
            except PortClash:
                if attempt == 2 or self._started_once:
                    raise
                self._log.close()
                self.port, self.raft_port = free_port(), free_port()
                self.metrics_port, self.management_port = free_port(), free_port()
        raise AssertionError("unreachable")

    def _start(self, timeout: float, wait: bool) -> NodeProcess:
        args = [
            *self.wrap,
            sys.executable,
            "-m",
            "merpati.node",
            "server",
            "--amqp-port",
            str(self.port),
            "--bind",
            self.host,
            "--data-dir",
            str(self.dir / "data"),
            "--node-id",
            f"test@{self.port}",
            "--raft-port",
            str(self.raft_port),
            "--metrics-port",
            str(self.metrics_port),
            "--management-port",
            str(self.management_port),
            *self.extra,
        ]
        if self.config is not None:
            cfg = self.dir / "merpati.toml"
            cfg.write_text(self.config)
            args += ["--config", str(cfg)]
        env = {**os.environ, **self.env}
        env.setdefault("PYTHONUNBUFFERED", "1")
        self._log = open(self.log_path, "ab")  # noqa: SIM115 (closed in stop)
        offset = self.log_path.stat().st_size
        self.proc = subprocess.Popen(
            args,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=Path(__file__).resolve().parents[2],
        )
        self._offset = offset
        if not wait:
            return self
        self.wait_ready(timeout)
        self._started_once = True  # a restart keeps its ports: clients and peers know them
        return self

    def wait_ready(self, timeout: float = 15.0) -> NodeProcess:
        """Wait for this run's ready line (or fail with the log if the process exits)."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                if PORT_CLASH in self.log_path.read_bytes()[self._offset :]:
                    raise PortClash(f"node exited: a port it was given is taken:\n{self.log()}")
                raise RuntimeError(f"node exited with {self.proc.returncode}:\n{self.log()}")
            if b" ready: " in self.log_path.read_bytes()[self._offset :]:
                return self
            time.sleep(0.05)
        raise RuntimeError(f"node did not become ready in {timeout}s:\n{self.log()}")

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}"

    @property
    def management_url(self) -> str:
        return f"http://{self.host}:{self.management_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def discard(self, keep: bool = False) -> None:
        """The end of this node: SIGKILL if still running, then its directory is removed, unless
        `keep` or $MERPATI_TEST_KEEP_DIRS (then it is listed in `kept_dirs`). Idempotent."""
        if self.alive():
            self.stop(signal.SIGKILL)
        log = getattr(self, "_log", None)
        if log is not None and not log.closed:
            log.close()  # a start that failed leaves it open
        if _nodes.pop(self.serial, None) is None:
            return
        if keep or os.environ.get(KEEP_DIRS):
            kept_dirs.append(self.dir)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)
