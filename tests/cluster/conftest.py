"""Three real node processes on loopback forming one cluster."""

from __future__ import annotations

import socket
import time

import pytest

from tests.support.http import call, samples, scrape
from tests.support.node import NodeProcess, PortClash


def _port_pair() -> int:
    """A free port P with P+1 free too (cluster port and Raft port)."""
    for _ in range(50):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
            if port >= 65535:
                continue
            with socket.socket() as b:
                try:
                    b.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
        return port
    raise RuntimeError("no free port pair")


class Cluster:
    def __init__(self, size: int = 3, extra: tuple[str, ...] = ()) -> None:
        self.ports = {f"n{i + 1}": _port_pair() for i in range(size)}
        self.peers = ",".join(f"{n}=127.0.0.1:{p}" for n, p in self.ports.items())
        while True:
            self.nodes = {
                n: NodeProcess(
                    "--node-id",
                    n,
                    "--cluster-port",
                    str(p),
                    "--raft-port",
                    str(p + 1),
                    "--peers",
                    self.peers,
                    *extra,
                )
                for n, p in self.ports.items()
            }
            # Ports are picked before anything binds them: no two listeners may share one.
            taken = [p for p in self.ports.values()] + [p + 1 for p in self.ports.values()]
            for node in self.nodes.values():
                taken += [node.port, node.metrics_port, node.management_port]
            if len(taken) == len(set(taken)):
                break
            for node in self.nodes.values():
                node.discard()

    def start(self) -> Cluster:
        # Start order does not matter: each waits for a majority; start all, then wait for all.
        for n in self.nodes.values():
            n.start(timeout=0, wait=False)
        for n in self.nodes.values():
            n.wait_ready(timeout=60)
        for n in self.nodes.values():
            n._started_once = True
        return self

    def stop(self) -> None:
        for n in self.nodes.values():
            n.stop()

    def discard(self, keep: bool = False) -> None:
        """Stop what still runs and remove the nodes' directories (`keep`: leave them)."""
        for n in self.nodes.values():
            n.discard(keep)

    def __getitem__(self, name: str) -> NodeProcess:
        return self.nodes[name]


def wait_all_running(cluster: Cluster, timeout: float = 15.0) -> None:
    """Until every node sees every node running, its forwarding link up: each learns that a
    restarted node is back from its own Ping (a second apart), and meanwhile a queue on it is
    reachable through the nodes that already see it, not through one that does not."""
    deadline = time.monotonic() + timeout
    for name in cluster.nodes:
        while True:
            status, nodes = call(cluster[name].management_url, "GET", "/api/nodes")
            links = samples(scrape(cluster[name].metrics_url))
            peers = [p for p in cluster.nodes if p != name]
            if (
                status == 200
                and all(n["running"] for n in nodes)
                and all(links.get(f'merpati_forwarding_peer_up{{peer="{p}"}}') == 1 for p in peers)
            ):
                break
            assert time.monotonic() < deadline, f"{name} still sees a node down: {nodes}"
            time.sleep(0.1)


def start_cluster(size: int = 3, extra: tuple[str, ...] = ()) -> Cluster:
    """A started cluster (`extra`: more flags for every node); ports taken by another process
    meanwhile mean new ports, not a failure."""
    for attempt in range(3):
        c = Cluster(size, extra)
        try:
            return c.start()
        except PortClash:
            c.stop()
            c.discard()
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def cluster(request):
    c = start_cluster()
    yield c
    c.stop()
    c.discard(keep=request.session.testsfailed > 0)


NETNS_CONFIG = "loopback-users = []\n"  # clients reach the nodes over the bridge, not loopback


class NetnsCluster(Cluster):
    """Nodes each in its own network namespace of `net` (tests/support/netns.py), at their own
    addresses on its bridge, every one on the default ports; the test process reaches them over
    the bridge, so `guest` may log in from there, and the cluster needs a secret."""

    def __init__(self, net, extra: tuple[str, ...] = ()) -> None:
        import secrets

        self.net = net
        self.ports = {n: 25672 for n in net.names}
        self.peers = ",".join(f"{n}={net.address(n)}:25672" for n in net.names)
        secret = secrets.token_hex(16)
        self.nodes = {}
        for n in net.names:
            node = NodeProcess(
                "--node-id",
                n,
                "--cluster-port",
                "25672",
                "--raft-port",
                "25673",
                "--peers",
                self.peers,
                "--cluster-secret",
                secret,
                *extra,
                config=NETNS_CONFIG,
                host=net.address(n),
                wrap=net.wrap(n),
            )
            # A namespace of its own: RabbitMQ's ports are free there.
            node.port, node.management_port, node.metrics_port = 5672, 15672, 15692
            self.nodes[n] = node


def start_netns_cluster(net, extra: tuple[str, ...] = ()) -> NetnsCluster:
    c = NetnsCluster(net, extra)
    try:
        return c.start()
    except BaseException:
        c.stop()
        c.discard(keep=True)
        raise
