"""RabbitMQ nodes for side-by-side benchmarks (Debian's rabbitmq-server, run as its user)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

RMQ_AMQP = 5701  # RabbitMQ nodes: AMQP 5701, 5702, ...; Erlang distribution 25801, 25802, ...
RMQ_DIST = 25801


class RabbitCluster:
    """`size` RabbitMQ nodes from Debian's rabbitmq-server, each with its own node name, ports
    (AMQP RMQ_AMQP + i, distribution RMQ_DIST + i) and data directory, joined into one cluster.
    `erl_args` go to RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS (e.g. "+sbwt none": no scheduler
    busy-waiting, so its CPU time counts work, not spinning)."""

    def __init__(self, size: int = 3, erl_args: str = "") -> None:
        self.host = socket.gethostname().split(".")[0]
        self.base = Path(tempfile.mkdtemp(prefix="rmq-bench-"))
        self.names = [f"bench{i + 1}@{self.host}" for i in range(size)]
        self.erl_args = erl_args

    def port(self, i: int = 0) -> int:
        return RMQ_AMQP + i

    def _env(self, i: int) -> dict[str, str]:
        d = self.base / str(i)
        return {
            **os.environ,
            "RABBITMQ_NODENAME": self.names[i],
            "RABBITMQ_NODE_PORT": str(RMQ_AMQP + i),
            "RABBITMQ_DIST_PORT": str(RMQ_DIST + i),
            "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
            "RABBITMQ_LOG_BASE": str(d / "log"),
            "RABBITMQ_PID_FILE": str(d / "pid"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
            **({"RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": self.erl_args} if self.erl_args else {}),
        }

    def ctl(self, i: int, *args: str) -> str:
        out = subprocess.run(
            ["rabbitmqctl", "-n", self.names[i], *args],
            env=self._env(i),
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout

    def start(self) -> RabbitCluster:
        for i in range(len(self.names)):
            (self.base / str(i)).mkdir(parents=True)
            (self.base / str(i) / "enabled_plugins").write_text("[].\n")
        # Debian's rabbitmq-server and rabbitmqctl run as the user rabbitmq.
        subprocess.run(["chown", "-R", "rabbitmq:rabbitmq", str(self.base)], check=True)
        for i in range(len(self.names)):
            subprocess.run(self._server_command(), env=self._env(i), check=True)
        for i in range(len(self.names)):
            pidfile = str(self.base / str(i) / "pid")
            self.ctl(i, "wait", pidfile, "--timeout", "120")
        for i in range(1, len(self.names)):
            self.ctl(i, "stop_app")
            self.ctl(i, "join_cluster", self.names[0])
            self.ctl(i, "start_app")
        return self

    def _server_command(self) -> list[str]:
        # Debian's wrapper switches to the user rabbitmq with su, whose PAM session sets the
        # open-file limit back to 1024: too few for the connection benchmarks. As root, switch
        # ourselves and raise it to the hard limit first.
        server = "/usr/lib/rabbitmq/bin/rabbitmq-server"
        if os.geteuid() != 0 or not os.path.exists(server):
            return ["rabbitmq-server", "-detached"]
        return [
            "su",
            "rabbitmq",
            "-s",
            "/bin/sh",
            "-c",
            f"ulimit -n $(ulimit -Hn); exec {server} -detached",
        ]

    def pids(self) -> list[int]:
        return [int((self.base / str(i) / "pid").read_text()) for i in range(len(self.names))]

    def stop(self) -> None:
        for i in range(len(self.names)):
            subprocess.run(
                ["rabbitmqctl", "-n", self.names[i], "stop"],
                env=self._env(i),
                capture_output=True,
            )
        shutil.rmtree(self.base, ignore_errors=True)
