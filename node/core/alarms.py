"""Resource alarms (memory, disk): which node has which, and what publishers are blocked by.

Theory of operation: as in RabbitMQ, an alarm is a (node, resource) pair, and publishers on
every node of the cluster are blocked while any node has one. This node's monitors raise and
clear its own alarms (node/server.py: resident memory against --memory-high-watermark, free disk
space of the data directory against --disk-free-limit); the other nodes' arrive with their
answers to the forwarding Ping (cluster/forwarding/client.py), and a node whose link goes down,
or that leaves the cluster, has its alarms dropped: RabbitMQ clears the alarms of a node that
goes down, so that a dead node's last word cannot block the cluster for ever.

Alarms are kept per resource so that one clearing unblocks nothing while another stands: the
broker tells its connections the set of resources in effect anywhere (`in_effect`), and a
connection is unblocked only when that set is empty.

No I/O here: `Alarms` is the bookkeeping the broker keeps, tested on its own.
"""

from __future__ import annotations

from collections.abc import Iterable

MEMORY = "memory"
DISK = "disk"
RESOURCES = (MEMORY, DISK)

# The `resource` names of RabbitMQ's health check and `rabbit_alarm:format_as_map`.
HEALTH_NAMES = {MEMORY: "memory", DISK: "disk space"}


class Alarms:
    """The alarms of this node (`local`) and of the others (`remote`, by node id)."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.local: set[str] = set()
        self.remote: dict[str, frozenset[str]] = {}

    def set_local(self, resource: str, raised: bool) -> bool:
        """Raise or clear one of this node's alarms; whether that changed anything."""
        if resource not in RESOURCES:
            raise ValueError(f"unknown resource alarm {resource!r}")
        if raised == (resource in self.local):
            return False
        if raised:
            self.local.add(resource)
        else:
            self.local.discard(resource)
        return True

    def set_remote(self, node: str, resources: Iterable[str]) -> bool:
        """What `node` says its alarms are now (empty: none, or the node is gone); whether that
        changed anything. Resources this node does not know (a newer peer's) are ignored: they
        could not be cleared by anything this node understands."""
        if node == self.node_id:
            return False
        new = frozenset(r for r in resources if r in RESOURCES)
        old = self.remote.get(node, frozenset())
        if new == old:
            return False
        if new:
            self.remote[node] = new
        else:
            self.remote.pop(node, None)
        return True

    def in_effect(self) -> frozenset[str]:
        """The resources alarmed on any node: what publishers are blocked by."""
        out = set(self.local)
        for resources in self.remote.values():
            out |= resources
        return frozenset(out)

    def by_node(self) -> list[tuple[str, str]]:
        """Every alarm as (node, resource), this node's first, then by node id."""
        rows = [(self.node_id, r) for r in RESOURCES if r in self.local]
        for node in sorted(self.remote):
            rows += [(node, r) for r in RESOURCES if r in self.remote[node]]
        return rows


def blocked_reason(resources: Iterable[str]) -> str:
    """The reason of 0-9-1 connection.blocked, as RabbitMQ words it: "low on memory", "low on
    disk", or both joined with " & " (disk first, the order RabbitMQ's set of reasons lists)."""
    return "low on " + " & ".join(sorted(resources))
