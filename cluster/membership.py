"""Who is in the cluster: the `--peers` forms, the Raft addresses, liveness, queue placement.

`--peers` names every member, the node's own entry included, in one of two forms:

    n1=10.0.0.1:25672,n2=10.0.0.2:25672,n3=10.0.0.3:25672    node-id=host:cluster-port, comma-separated
    dns:merpati-headless.default.svc.cluster.local:25672      every address the name resolves to

With the DNS form (a Kubernetes headless service), each address is turned back into its host name
(the pod's stable DNS name) and the node id is that name's first label ("merpati-0"), which is what
a StatefulSet gives its pods; a node's own id must be among them. A pod is in DNS only once it has
an address, so a node started beside a pod still Pending would see too few members and could form
a cluster of its own: `--peers-expected N` makes it wait until the name resolves to N members
(`wait_for_members`). Once a node has been part of the cluster it keeps the members it knows in
its data directory (`MembersFile`) and starts again from those, DNS only adding to them: a pod
that restarts while another is Pending need not wait for it, and pysyncobj copes with a member
whose name does not resolve yet.

The Raft port of every member is its cluster port plus the same offset (`--raft-port` minus
`--cluster-port`, 1 by default). pysyncobj identifies members by address, so every node must spell
every address the same way: they all come from this one list.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class PeersError(ValueError):
    pass


@dataclass(frozen=True)
class Member:
    node_id: str
    host: str
    cluster_port: int
    raft_port: int

    @property
    def cluster_address(self) -> str:
        return f"{self.host}:{self.cluster_port}"

    @property
    def raft_address(self) -> str:
        return f"{self.host}:{self.raft_port}"


def _port(text: str, where: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise PeersError(f"{where}: port {text!r} is not a number")
    if not 0 < port < 65536:
        raise PeersError(f"{where}: port {port} is not a TCP port")
    return port


def parse_peers(spec: str, raft_offset: int) -> list[Member]:
    spec = spec.strip()
    if spec.startswith("dns:"):
        _, _, rest = spec.partition(":")
        name, sep, port_text = rest.rpartition(":")
        if not sep or not name:
            raise PeersError(f"peers {spec!r}: the DNS form is dns:NAME:PORT")
        return resolve_dns(name, _port(port_text, f"peers {spec!r}"), raft_offset)
    members = []
    seen: set[str] = set()
    for entry in filter(None, (e.strip() for e in spec.split(","))):
        node_id, eq, address = entry.partition("=")
        host, colon, port_text = address.rpartition(":")
        if not eq or not node_id or not colon or not host:
            raise PeersError(f"peers entry {entry!r}: expected node-id=host:cluster-port")
        if node_id in seen:
            raise PeersError(f"peers: node id {node_id!r} appears twice")
        seen.add(node_id)
        port = _port(port_text, f"peers entry {entry!r}")
        members.append(Member(node_id, host.strip("[]"), port, port + raft_offset))
    if not members:
        raise PeersError("peers: no members given")
    return members


def resolve_dns(name: str, port: int, raft_offset: int) -> list[Member]:
    try:
        infos = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise PeersError(f"peers dns:{name}:{port}: cannot resolve: {e}")
    members = {}
    for info in infos:
        ip = info[4][0]
        try:
            host = socket.gethostbyaddr(ip)[0]
        except OSError:
            host = ip
        node_id = host.split(".")[0]
        members[node_id] = Member(node_id, host, port, port + raft_offset)
    return sorted(members.values(), key=lambda m: m.node_id)


def wait_for_members(
    spec: str,
    raft_offset: int,
    expected: int,
    *,
    interval: float = 1.0,
    say_every: float = 10.0,
    log: Any = None,
    sleep: Any = time.sleep,
    clock: Any = time.monotonic,
) -> list[Member]:
    """parse_peers, and for the DNS form, again until at least `expected` members resolve.

    There is no deadline: until the missing pods have addresses the node must not form a
    cluster, and the orchestrator's startup probe decides how long that may take."""
    if not spec.strip().startswith("dns:") or expected <= 1:
        return parse_peers(spec, raft_offset)
    said = None
    while True:
        try:
            members = parse_peers(spec, raft_offset)
        except PeersError as e:
            members, why = [], str(e)
        else:
            why = ""
        if len(members) >= expected:
            return members
        now = clock()
        if log is not None and (said is None or now - said >= say_every):
            said = now
            seen = ", ".join(m.node_id for m in members) or "none"
            log.warning(
                "waiting for the cluster's members in DNS: %d of %d seen (%s)%s",
                len(members),
                expected,
                seen,
                f"; {why}" if why else "",
            )
        sleep(interval)


class MembersFile:
    """The members this node last knew (data dir), for restarts with the DNS form of --peers."""

    NAME = "cluster-members.json"

    def __init__(self, data_dir: str | Path) -> None:
        self.path = Path(data_dir) / self.NAME

    def load(self) -> list[Member]:
        try:
            raw = json.loads(self.path.read_text())
            return [
                Member(m["node_id"], m["host"], int(m["cluster_port"]), int(m["raft_port"]))
                for m in raw["members"]
            ]
        except FileNotFoundError:
            return []
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise PeersError(f"{self.path} is unreadable ({e}); remove it to rediscover peers")

    def save(self, members: list[Member]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        body = {"members": [m.__dict__ for m in sorted(members, key=lambda m: m.node_id)]}
        tmp.write_text(json.dumps(body, indent=1) + "\n")
        os.replace(tmp, self.path)


def known_or_discovered(
    spec: str, raft_offset: int, expected: int, known: list[Member], log: Any = None
) -> list[Member]:
    """The members to start with: for a node that already knows its cluster (DNS form), those it
    knows, at once; otherwise wait_for_members. A node DNS shows that is not among the known
    members is not one yet: it joins by itself (cluster/join.py), and becoming Raft partners
    with it here would make a cluster the others do not have."""
    if not known or not spec.strip().startswith("dns:"):
        return wait_for_members(spec, raft_offset, expected, log=log)
    try:
        seen = parse_peers(spec, raft_offset)
    except PeersError as e:
        seen = []
        if log is not None:
            log.warning("%s; starting with the members known from the last run", e)
    names = {m.node_id for m in known}
    new = [m.node_id for m in seen if m.node_id not in names]
    if new and log is not None:
        log.info("in DNS but not members (yet): %s", ", ".join(new))
    return sorted(known, key=lambda m: m.node_id)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Membership:
    """The configured members, this node among them, and who is reachable now."""

    def __init__(self, members: list[Member], node_id: str) -> None:
        by_id = {m.node_id: m for m in members}
        if node_id not in by_id:
            raise PeersError(
                f"this node's id {node_id!r} is not among the peers ({', '.join(by_id)}); "
                "name every member, this node included"
            )
        self.members = by_id
        self.me = by_id[node_id]
        self.status: Any = None  # callable returning the Raft status (set by the wiring)
        self.peer_state: Any = None  # callable node_id -> forwarding link state (set by the wiring)

    @property
    def others(self) -> list[Member]:
        return [m for m in self.members.values() if m is not self.me]

    def replace(self, members: list[Member]) -> None:
        """The members as the cluster says (a node that joined), this node among them."""
        by_id = {m.node_id: m for m in members}
        self.me = by_id.setdefault(self.me.node_id, self.me)
        self.members = by_id

    def live(self) -> set[str]:
        """Node ids this node can reach now (itself included).

        Raft followers do not talk to each other, so a Raft connection is not enough: the
        forwarding link's health counts too (a peer not pinged yet counts as up)."""
        alive = {self.me.node_id}
        status = self.status() if self.status is not None else {}
        for m in self.others:
            raft_up = status.get(f"partner_node_status_server_{m.raft_address}") == 2
            link = self.peer_state(m.node_id) if self.peer_state is not None else None
            if raft_up or link in ("up", "unknown"):
                alive.add(m.node_id)
        return alive

    def leader_node(self) -> str | None:
        status = self.status() if self.status is not None else {}
        leader = status.get("leader")
        for m in self.members.values():
            if leader is not None and str(leader) == m.raft_address:
                return m.node_id
        return None


def place_queue(
    state: Any, live: set[str], local: str, exclusive: bool, locator: str = "balanced"
) -> str:
    """The leader for a new queue: this node for an exclusive queue (it lives and dies with its
    connection) and for the client-local locator (the connection that declares it is here, so
    its publishes and deliveries need not cross to another node), else the live member leading
    the fewest queues (ties: this node, then by id). Draining members are skipped, unless every
    live member is draining: a client-local queue declared on a draining node is balanced
    instead, as that node is handing its queues away."""
    if exclusive or len(live) <= 1:
        return local
    draining = getattr(state, "draining", ())
    if locator == "client-local" and local not in draining:
        return local
    live = (live - draining) or live
    counts = dict.fromkeys(live, 0)
    for vh in state.vhosts.values():
        for q in vh.queues.values():
            if q.leader in counts:
                counts[q.leader] += 1
    return min(sorted(counts), key=lambda n: (counts[n], n != local))
