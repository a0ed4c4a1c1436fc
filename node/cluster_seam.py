"""The broker's seam to the cluster it belongs to.

The broker never knows how other nodes are reached or how a queue moves between them: it asks
the `ClusterSeam` it was constructed with. cluster/ implements it (cluster.cluster_node.ClusterNode:
placement among live nodes, RemoteQueues over gRPC, queue handovers); a node on its own, and the
tests of the core, use `LoneNode`, where every queue is led here.

`bind` is the one call in the other direction: the broker introduces itself from its constructor,
before it applies any metadata, so the cluster side can subscribe to the same applied commands
(queue moves, membership) and reach the broker's queues.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from .core.limits import ConnectionCounts

if TYPE_CHECKING:
    from .broker import Broker
    from .core.queue import QueueHandle
    from .metadata.state import QueueDef

# What the store holds, per (vhost, queue): (queue id, durable, delivered-before count).
Stored = dict[tuple[str, str], tuple[int, bool, int]]


class ClusterSeam(Protocol):
    def bind(self, broker: Broker) -> None:
        """Called once by the broker's constructor, before any command is applied."""

    def place_queue(self, exclusive: bool, locator: str = "balanced") -> str:
        """The node that leads a new queue: this node for an exclusive one (it stays with its
        connection) and for `locator` client-local, else the cluster balances leaders."""

    def place_replicas(self, leader: str, count: int) -> tuple[str, ...]:
        """The nodes holding a new replicated queue's replicas, `leader` first (empty: this
        cluster does not replicate; the queue is a single copy)."""

    def replicated_queue(self, qdef: QueueDef) -> QueueHandle | None:
        """The handle of a replicated queue (this node's replica when it leads it, else the
        leader's), after setting up this node's replica of it if it holds one."""

    def replica_status(self, vhost: str, name: str) -> dict[str, Any] | None:
        """This node's replica of a replicated queue, for operators (None: it holds none)."""

    def remote_queue(self, qdef: QueueDef) -> QueueHandle | None:
        """The handle of a queue another node leads (None: that node cannot be reached yet)."""

    def queue_purged(self, q: QueueHandle) -> None:
        """A queue this node leads was purged (nodes still handing it over purge their part)."""

    def recover(self, stored: Stored, keep: set[tuple[str, str]]) -> int:
        """At start, after the broker refilled its queues: deal with the stored rows of queues
        this node no longer leads (adding those it keeps to `keep`); returns their messages."""

    def recovered(self) -> None:
        """Recovery is over; the node serves clients from now on."""

    async def step_down(self, timeout: float) -> None:
        """At stop, first: hand the leadership of replicated queues led here to other replicas
        (waiting up to `timeout` s), so they do not wait for a failover."""

    async def wait_handovers(self, timeout: float) -> bool:
        """At stop: wait up to `timeout` s for queue moves under way; True when none is left."""

    def peer_counts(self) -> ConnectionCounts:
        """The client connections and channels of the other live nodes, as they last reported
        them (for vhost and user limits counted over the cluster)."""

    async def peer_client_views(self, kind: str) -> list[dict[str, Any]]:
        """The other reachable nodes' client "connections", "channels" or "consumers" as their
        management API shows them (node.management.views.ClientViews); a node that does not
        answer in time is left out."""

    async def close_peer_connection(self, node: str, name: str, reason: str) -> bool:
        """Close client connection `name` of another node; False: it has no such connection
        (or cannot be reached)."""


class LoneNode:
    """A node that is its own cluster: every queue is led here, nothing moves."""

    def __init__(self) -> None:
        self.node_id = ""

    def bind(self, broker: Broker) -> None:
        self.node_id = broker.node_id

    def place_queue(self, exclusive: bool, locator: str = "balanced") -> str:
        return self.node_id

    def place_replicas(self, leader: str, count: int) -> tuple[str, ...]:
        return ()

    def replicated_queue(self, qdef: QueueDef) -> QueueHandle | None:
        return None

    def replica_status(self, vhost: str, name: str) -> dict[str, Any] | None:
        return None

    def remote_queue(self, qdef: QueueDef) -> QueueHandle | None:
        return None

    def queue_purged(self, q: QueueHandle) -> None:
        """Nothing to tell: no other node can be handing a queue of this one over."""

    def recover(self, stored: Stored, keep: set[tuple[str, str]]) -> int:
        return 0

    def recovered(self) -> None:
        """Nothing to announce: a lone node never hands a queue over."""

    async def step_down(self, timeout: float) -> None:
        """Nothing is replicated on a lone node."""

    async def wait_handovers(self, timeout: float) -> bool:
        return True

    def peer_counts(self) -> ConnectionCounts:
        return ConnectionCounts()

    async def peer_client_views(self, kind: str) -> list[dict[str, Any]]:
        return []

    async def close_peer_connection(self, node: str, name: str, reason: str) -> bool:
        return False
