"""Metadata commands. Frozen and self-contained: applying one needs nothing but the state."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class AddVhost:
    name: str
    # RabbitMQ's vhost metadata; None leaves an existing vhost's value as it is (a node's
    # start declares its vhosts with none of them).
    description: str | None = None
    tags: tuple[str, ...] | None = None
    default_queue_type: str | None = None  # of queues declared in it without x-queue-type


@dataclass(frozen=True)
class DeleteVhost:
    name: str


@dataclass(frozen=True)
class PutUser:
    name: str
    password_hash: str  # RabbitMQ's salted SHA-256 format (base64 of salt + digest)
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class DeleteUser:
    name: str


@dataclass(frozen=True)
class SetPermissions:
    user: str
    vhost: str
    configure: str = ".*"
    write: str = ".*"
    read: str = ".*"


@dataclass(frozen=True)
class ClearPermissions:
    user: str
    vhost: str


@dataclass(frozen=True)
class DeclareExchange:
    vhost: str
    name: str
    type: str
    durable: bool = True
    auto_delete: bool = False
    internal: bool = False
    arguments: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DeleteExchange:
    vhost: str
    name: str
    if_unused: bool = False


@dataclass(frozen=True)
class DeclareQueue:
    vhost: str
    name: str
    durable: bool = False
    exclusive_owner: str | None = None  # connection id owning an exclusive queue
    auto_delete: bool = False
    arguments: dict[str, Any] = field(default_factory=dict)
    leader: str = ""  # node id chosen by the proposer
    # A replicated (quorum) queue: the nodes holding a replica (the leader first) and a random
    # id telling this queue from an earlier one of the same name. Empty: one copy, on `leader`.
    replicas: tuple[str, ...] = ()
    incarnation: str = ""


@dataclass(frozen=True)
class DeleteQueue:
    vhost: str
    name: str


@dataclass(frozen=True)
class Bind:
    vhost: str
    source: str
    destination_kind: str  # "q" or "e"
    destination: str
    routing_key: str
    arguments: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Unbind:
    vhost: str
    source: str
    destination_kind: str
    destination: str
    routing_key: str
    arguments: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SetPolicy:
    """A RabbitMQ-style policy: `definition` keys without the x- prefix ("max-length", ...)."""

    vhost: str
    name: str
    pattern: str
    definition: dict[str, Any] = field(default_factory=dict)
    priority: int = 0
    apply_to: str = "all"  # queues | exchanges | all


@dataclass(frozen=True)
class ClearPolicy:
    vhost: str
    name: str


@dataclass(frozen=True)
class SetVhostLimits:
    """A vhost's limits (RabbitMQ's `vhost-limits` parameter: max-connections, max-queues).
    `replace`: these are all its limits now (`set_vhost_limits`); else they are merged into what
    it has (the API's PUT of one limit). Merged in the state machine, so two concurrent PUTs of
    different limits both stay."""

    vhost: str
    limits: dict[str, int] = field(default_factory=dict)
    replace: bool = True


@dataclass(frozen=True)
class ClearVhostLimits:
    """Drop some of a vhost's limits, or all of them (`names` empty)."""

    vhost: str
    names: tuple[str, ...] = ()


@dataclass(frozen=True)
class SetUserLimits:
    """A user's limits (max-connections, max-channels), merged into those it has, as
    `rabbitmqctl set_user_limits` does; `replace` sets exactly these."""

    user: str
    limits: dict[str, int] = field(default_factory=dict)
    replace: bool = False


@dataclass(frozen=True)
class ClearUserLimits:
    """Drop some of a user's limits, or all of them (`names` empty, or naming "all")."""

    user: str
    names: tuple[str, ...] = ()


@dataclass(frozen=True)
class NodeJoined:
    """A member of the cluster and where its peers reach it (gRPC and Raft addresses)."""

    node_id: str
    cluster_address: str
    raft_address: str


@dataclass(frozen=True)
class NodeLeft:
    node_id: str


@dataclass(frozen=True)
class MoveQueue:
    """Queue leadership moves from one node to another (rebalance, drain). The old leader then
    hands its messages over and says so with QueueHandedOver; until then the queue lists it in
    `handing_over`."""

    vhost: str
    name: str
    from_node: str
    to_node: str


@dataclass(frozen=True)
class QueueHandedOver:
    """`node_id` holds no more messages of a queue it led before a MoveQueue. `moves` is the
    queue's move count (QueueDef.moves) the proposer saw; after another move the command is
    refused as stale (-1: not checked)."""

    vhost: str
    name: str
    node_id: str
    moves: int = -1


@dataclass(frozen=True)
class QueueElection:
    """The controller starts choosing a new leader of a replicated queue for `epoch` (the
    queue's epoch + 1). Every replica applies it as a fence: from then on it follows no leader
    of an older epoch. A controller that takes over finishes an election it finds under way."""

    vhost: str
    name: str
    incarnation: str
    epoch: int


@dataclass(frozen=True)
class QueueLeader:
    """`leader` (one of the replicas) leads the replicated queue from `epoch` on; the epoch is
    the one of the election under way, or the queue's epoch + 1 (a leader transfer)."""

    vhost: str
    name: str
    incarnation: str
    epoch: int
    leader: str


@dataclass(frozen=True)
class SetQueueReplicas:
    """A replicated queue's replica set gains or loses one node (grow, shrink, a node leaving):
    one at a time, so that every majority of the old set meets every majority of the new one;
    never the leader, and not during an election."""

    vhost: str
    name: str
    incarnation: str
    replicas: tuple[str, ...]


@dataclass(frozen=True)
class SetNodeDraining:
    """A draining node gets no new queues (placement skips it). Cleared by draining=False or by
    the node's next NodeStarted: a node that starts again is a normal member again."""

    node_id: str
    draining: bool = True


@dataclass(frozen=True)
class NodeStarted:
    """A node (re)started: what did not survive its restart goes (transient queues it led,
    exclusive queues of its connections, and — when it is the only member — transient exchanges)."""

    node_id: str
    only_member: bool = True
    # What the node's version understands of the log (FEATURES): commands an older member
    # could not apply are proposed only once every member said it understands them.
    features: tuple[str, ...] = ()


# Log features of this version (NodeStarted.features, MetadataState.supports).
BARRIER = "barrier"
BATCH = "batch"
FEATURES = (BARRIER, BATCH)


@dataclass(frozen=True)
class Barrier:
    """Changes nothing. A node asked for a name it does not know proposes one and waits until it
    applies here: everything committed before it (a queue another node declared, and answered
    declare-ok for, a moment ago) has then applied here too. Read-your-writes across nodes.
    Proposed only when every member understands it (feature BARRIER): an older node could not
    read it from the log."""


@dataclass(frozen=True)
class Batch:
    """Several proposals made in one event-loop turn, as one Raft entry: (request id, command)
    each, applied in order, each answered as if it had been proposed alone. One entry costs one
    journal write and its msyncs however many commands it holds, which is what makes a client
    that pipelines bindings (or many clients declaring at once) faster than one entry each. Not
    a Command: only the Raft log wraps and unwraps it (cluster/raft_log.py). Proposed only when
    every member understands it (feature BATCH)."""

    requests: tuple[tuple[str, Any], ...]


Command = (
    AddVhost
    | DeleteVhost
    | PutUser
    | DeleteUser
    | SetPermissions
    | ClearPermissions
    | DeclareExchange
    | DeleteExchange
    | DeclareQueue
    | DeleteQueue
    | Bind
    | Unbind
    | SetPolicy
    | ClearPolicy
    | SetVhostLimits
    | ClearVhostLimits
    | SetUserLimits
    | ClearUserLimits
    | NodeJoined
    | NodeLeft
    | MoveQueue
    | QueueHandedOver
    | QueueElection
    | QueueLeader
    | SetQueueReplicas
    | SetNodeDraining
    | NodeStarted
    | Barrier
)
