"""The metadata state machine: vhosts, users, permissions, exchanges, queues, bindings.

Everything that affects metadata lives in `MetadataState.apply`. It never raises for a command that
cannot apply: it returns a `MetadataError` (with the AMQP reply code that names the failure), so a
replayed or replicated log never stops half-way, and every node reaches the same verdict.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..core.limits import USER_LIMITS, VHOST_LIMITS, effective, queue_limit_text, validate
from ..routing.exchange import Binding, Destination, Exchange, args_key
from . import commands as c

NOT_FOUND = 404
PRECONDITION_FAILED = 406
ACCESS_REFUSED = 403
NOT_ALLOWED = 530
RESOURCE_LOCKED = 405

# What a vhost's default queue type may be (RabbitMQ also has "stream", which Merpati has not).
VHOST_QUEUE_TYPES = ("classic", "quorum")

DEFAULT_EXCHANGES = [
    ("amq.direct", "direct"),
    ("amq.fanout", "fanout"),
    ("amq.topic", "topic"),
    ("amq.headers", "headers"),
    ("amq.match", "headers"),
]

# The queue arguments RabbitMQ compares on redeclare; others are accepted and ignored (such as
# x-consumer-timeout, which RabbitMQ leaves out too: a redeclare keeps the first value).
EQUIVALENCE_ARGS = (
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-expires",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-priority",
    "x-message-ttl",
    "x-overflow",
    "x-queue-mode",
    "x-queue-type",
    "x-single-active-consumer",
    "x-delivery-limit",
    "x-queue-master-locator",
)


class MetadataError(Exception):
    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text


class QueueLimitExceeded(MetadataError):
    """A new queue beyond its vhost's max-queues: 406 PRECONDITION_FAILED to 0-9-1 clients and
    the API, as RabbitMQ; AMQP 1.0 says amqp:resource-limit-exceeded."""


def error_of(code: int, text: str, kind: str = "") -> MetadataError:
    """A MetadataError made again from its parts (cluster.raft_log keeps results as plain
    tuples), of its own class when `kind` names one of the kinds above."""
    cls = QueueLimitExceeded if kind == QueueLimitExceeded.__name__ else MetadataError
    return cls(code, text)


@dataclass
class QueueDef:
    vhost: str
    name: str
    durable: bool
    exclusive_owner: str | None
    auto_delete: bool
    arguments: dict[str, Any]
    leader: str
    # Former leaders still handing their messages over to `leader` (MoveQueue adds one,
    # QueueHandedOver removes it). A class-level default, so queues unpickled from a snapshot
    # written before this field existed read it as empty.
    handing_over: tuple[str, ...] = ()
    # MoveQueues applied to the queue so far: a QueueHandedOver proposed before a later move
    # (the queue moved back to its proposer and away again) is stale and refused.
    moves: int = 0
    # Replicated (quorum) queues (cluster/replication): the nodes with a replica, the leader's
    # epoch, the epoch of an election under way (0: none), and the queue's incarnation id.
    replicas: tuple[str, ...] = ()
    epoch: int = 0
    electing: int = 0
    incarnation: str = ""

    @property
    def replicated(self) -> bool:
        return bool(self.replicas)


@dataclass
class User:
    name: str
    password_hash: str
    tags: tuple[str, ...] = ()


@dataclass
class Permission:
    configure: str
    write: str
    read: str


@dataclass
class Policy:
    name: str
    pattern: str
    definition: dict[str, Any]
    priority: int
    apply_to: str

    def matches(self, name: str) -> bool:
        import re

        try:
            return re.search(self.pattern, name) is not None
        except re.error:
            return False


@dataclass
class VHost:
    name: str
    exchanges: dict[str, Exchange] = field(default_factory=dict)
    queues: dict[str, QueueDef] = field(default_factory=dict)
    # destination -> binding identities pointing at it, to drop them with the destination.
    bindings_to: dict[Destination, set[tuple]] = field(default_factory=dict)
    policies: dict[str, Policy] = field(default_factory=dict)
    description: str = ""
    tags: tuple[str, ...] = ()
    default_queue_type: str = ""  # "" = the node's (--default-queue-type)

    def policy_for(self, kind: str, name: str) -> Policy | None:
        """The policy that applies to a queue or exchange: the highest priority match wins."""
        best = None
        for p in self.policies.values():
            if p.apply_to not in ("all", kind + "s"):
                continue
            if p.matches(name) and (best is None or p.priority > best.priority):
                best = p
        return best


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def _norm_arg(value: Any) -> Any:
    from ..wire.table import as_int

    i = as_int(value)
    if i is not None:
        return i
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            return value
    return value


class MetadataState:
    def __init__(self) -> None:
        self.vhosts: dict[str, VHost] = {}
        self.users: dict[str, User] = {}
        self.permissions: dict[tuple[str, str], Permission] = {}
        # Cluster members: node id -> (cluster address, raft address).
        self.members: dict[str, tuple[str, str]] = {}
        # Nodes being drained: placement gives them no new queues.
        self.draining: set[str] = set()
        # The log features each member's version understands, as its last NodeStarted said.
        self.node_features: dict[str, frozenset[str]] = {}
        # Resource limits (node/core/limits.py) by vhost and by user, as set: a negative value
        # is kept as given (and means no limit), as RabbitMQ lists it.
        self.vhost_limits: dict[str, dict[str, int]] = {}
        self.user_limits: dict[str, dict[str, int]] = {}
        self.applied = 0

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Snapshots written before a field existed restore without it.
        self.__dict__.update(state)
        self.__dict__.setdefault("draining", set())
        self.__dict__.setdefault("vhost_limits", {})
        self.__dict__.setdefault("user_limits", {})
        self.__dict__.setdefault("node_features", {})

    # -- queries ------------------------------------------------------------------------------

    def exchange(self, vhost: str, name: str) -> Exchange | None:
        vh = self.vhosts.get(vhost)
        return vh.exchanges.get(name) if vh else None

    def queue(self, vhost: str, name: str) -> QueueDef | None:
        vh = self.vhosts.get(vhost)
        return vh.queues.get(name) if vh else None

    def supports(self, feature: str) -> bool:
        """Whether every member's version understands `feature` of the log."""
        return bool(self.members) and all(
            feature in self.node_features.get(node, ()) for node in self.members
        )

    # -- the state machine --------------------------------------------------------------------

    def apply(self, cmd: c.Command) -> Any:
        self.applied += 1
        handler = getattr(self, "_apply_" + type(cmd).__name__)
        try:
            return handler(cmd)
        except MetadataError as e:
            return e
        except (ValueError, TypeError) as e:
            # Front ends validate first; this keeps a replayed log going whatever it holds.
            return MetadataError(PRECONDITION_FAILED, f"invalid {type(cmd).__name__}: {e}")

    def _vhost(self, name: str) -> VHost:
        vh = self.vhosts.get(name)
        if vh is None:
            raise MetadataError(NOT_FOUND, f"no vhost '{name}'")
        return vh

    def _apply_Barrier(self, cmd: c.Barrier) -> Any:
        return None

    def _apply_AddVhost(self, cmd: c.AddVhost) -> Any:
        if cmd.default_queue_type not in (None, "", *VHOST_QUEUE_TYPES):
            raise MetadataError(
                PRECONDITION_FAILED,
                f"default queue type '{cmd.default_queue_type}' of vhost '{cmd.name}' is not "
                f"one of {', '.join(VHOST_QUEUE_TYPES)}",
            )
        vh = self.vhosts.get(cmd.name)
        if vh is not None:
            changed = False
            for attr in ("description", "tags", "default_queue_type"):
                value = getattr(cmd, attr)
                if value is not None and value != getattr(vh, attr):
                    setattr(vh, attr, value)
                    changed = True
            return "updated" if changed else "exists"
        vh = VHost(
            cmd.name,
            description=cmd.description or "",
            tags=cmd.tags or (),
            default_queue_type=cmd.default_queue_type or "",
        )
        vh.exchanges[""] = Exchange("", "direct", durable=True)
        for name, type_ in DEFAULT_EXCHANGES:
            vh.exchanges[name] = Exchange(name, type_, durable=True)
        self.vhosts[cmd.name] = vh
        return "created"

    def _apply_DeleteVhost(self, cmd: c.DeleteVhost) -> Any:
        if self.vhosts.pop(cmd.name, None) is None:
            raise MetadataError(NOT_FOUND, f"no vhost '{cmd.name}'")
        for key in [k for k in self.permissions if k[1] == cmd.name]:
            del self.permissions[key]
        # A vhost made again under the same name starts without limits, as in RabbitMQ.
        self.vhost_limits.pop(cmd.name, None)
        return "deleted"

    def _apply_PutUser(self, cmd: c.PutUser) -> Any:
        self.users[cmd.name] = User(cmd.name, cmd.password_hash, tuple(cmd.tags))
        return "ok"

    def _apply_DeleteUser(self, cmd: c.DeleteUser) -> Any:
        if self.users.pop(cmd.name, None) is None:
            raise MetadataError(NOT_FOUND, f"no user '{cmd.name}'")
        for key in [k for k in self.permissions if k[0] == cmd.name]:
            del self.permissions[key]
        self.user_limits.pop(cmd.name, None)
        return "deleted"

    def _apply_SetPermissions(self, cmd: c.SetPermissions) -> Any:
        if cmd.user not in self.users:
            raise MetadataError(NOT_FOUND, f"no user '{cmd.user}'")
        self._vhost(cmd.vhost)
        self.permissions[(cmd.user, cmd.vhost)] = Permission(cmd.configure, cmd.write, cmd.read)
        return "ok"

    def _apply_ClearPermissions(self, cmd: c.ClearPermissions) -> Any:
        self.permissions.pop((cmd.user, cmd.vhost), None)
        return "ok"

    def _apply_DeclareExchange(self, cmd: c.DeclareExchange) -> Any:
        vh = self._vhost(cmd.vhost)
        existing = vh.exchanges.get(cmd.name)
        if existing is not None:
            check_exchange_equivalent(existing, cmd)
            return "exists"
        vh.exchanges[cmd.name] = Exchange(
            cmd.name, cmd.type, cmd.durable, cmd.auto_delete, cmd.internal, dict(cmd.arguments)
        )
        return "created"

    def _apply_DeleteExchange(self, cmd: c.DeleteExchange) -> Any:
        vh = self._vhost(cmd.vhost)
        ex = vh.exchanges.get(cmd.name)
        if ex is None:
            raise MetadataError(NOT_FOUND, f"no exchange '{cmd.name}' in vhost '{cmd.vhost}'")
        if cmd.if_unused and (ex.bindings or vh.bindings_to.get(("e", cmd.name))):
            raise MetadataError(
                PRECONDITION_FAILED, f"exchange '{cmd.name}' in vhost '{cmd.vhost}' in use"
            )
        self._drop_exchange(vh, ex)
        return "deleted"

    def _drop_exchange(self, vh: VHost, ex: Exchange) -> None:
        for ident in list(ex.bindings):
            self._remove_binding(vh, ex, ident)
        for ident in list(vh.bindings_to.get(("e", ex.name), ())):
            source = vh.exchanges.get(ident[0])
            if source is not None:
                self._remove_binding(vh, source, ident)
        vh.bindings_to.pop(("e", ex.name), None)
        vh.exchanges.pop(ex.name, None)

    def _apply_DeclareQueue(self, cmd: c.DeclareQueue) -> Any:
        vh = self._vhost(cmd.vhost)
        existing = vh.queues.get(cmd.name)
        if existing is not None:
            # Another connection's exclusive queue, or a redeclare that flips `exclusive`: 405.
            if existing.exclusive_owner != cmd.exclusive_owner:
                raise MetadataError(
                    RESOURCE_LOCKED,
                    f"cannot obtain exclusive access to locked queue '{cmd.name}' in vhost '{cmd.vhost}'. "
                    "It could be originally declared on another connection or the exclusive property "
                    "value does not match that of the original declaration.",
                )
            check_queue_equivalent(existing, cmd)
            return "exists"
        # The vhost's max-queues, checked here rather than by the proposer: commands apply in
        # log order on every node, so two nodes declaring at once cannot both get the last one.
        limit = effective(self.vhost_limits.get(cmd.vhost), "max-queues")
        if limit is not None and len(vh.queues) >= limit:
            raise QueueLimitExceeded(
                PRECONDITION_FAILED, queue_limit_text(cmd.vhost, cmd.name, limit)
            )
        vh.queues[cmd.name] = QueueDef(
            cmd.vhost,
            cmd.name,
            cmd.durable,
            cmd.exclusive_owner,
            cmd.auto_delete,
            dict(cmd.arguments),
            cmd.leader,
            replicas=tuple(cmd.replicas),
            epoch=1 if cmd.replicas else 0,
            incarnation=cmd.incarnation,
        )
        return "created"

    def _apply_DeleteQueue(self, cmd: c.DeleteQueue) -> Any:
        vh = self._vhost(cmd.vhost)
        if vh.queues.pop(cmd.name, None) is None:
            raise MetadataError(NOT_FOUND, f"no queue '{cmd.name}' in vhost '{cmd.vhost}'")
        dest = ("q", cmd.name)
        for ident in list(vh.bindings_to.get(dest, ())):
            source = vh.exchanges.get(ident[0])
            if source is not None:
                self._remove_binding(vh, source, ident)
        vh.bindings_to.pop(dest, None)
        return "deleted"

    def _apply_SetPolicy(self, cmd: c.SetPolicy) -> Any:
        vh = self._vhost(cmd.vhost)
        import re

        try:
            re.compile(cmd.pattern)
        except re.error as e:
            raise MetadataError(PRECONDITION_FAILED, f"invalid policy pattern {cmd.pattern!r}: {e}")
        if cmd.apply_to not in ("queues", "exchanges", "all"):
            raise MetadataError(
                PRECONDITION_FAILED, f"invalid apply-to {cmd.apply_to!r}: queues, exchanges or all"
            )
        vh.policies[cmd.name] = Policy(
            cmd.name, cmd.pattern, dict(cmd.definition), cmd.priority, cmd.apply_to
        )
        return "ok"

    def _apply_ClearPolicy(self, cmd: c.ClearPolicy) -> Any:
        vh = self._vhost(cmd.vhost)
        if vh.policies.pop(cmd.name, None) is None:
            raise MetadataError(NOT_FOUND, f"no policy '{cmd.name}' in vhost '{cmd.vhost}'")
        return "deleted"

    # -- resource limits (node/core/limits.py) ------------------------------------------------

    def _apply_SetVhostLimits(self, cmd: c.SetVhostLimits) -> Any:
        self._vhost(cmd.vhost)
        try:
            limits = validate("vhost-limits", VHOST_LIMITS, cmd.limits)
        except ValueError as e:
            raise MetadataError(PRECONDITION_FAILED, str(e))
        if not cmd.replace:
            limits = {**self.vhost_limits.get(cmd.vhost, {}), **limits}
        _set_or_drop(self.vhost_limits, cmd.vhost, limits)
        return "ok"

    def _apply_ClearVhostLimits(self, cmd: c.ClearVhostLimits) -> Any:
        self._vhost(cmd.vhost)
        _clear(self.vhost_limits, cmd.vhost, cmd.names)
        return "cleared"

    def _apply_SetUserLimits(self, cmd: c.SetUserLimits) -> Any:
        if cmd.user not in self.users:
            raise MetadataError(NOT_FOUND, f"no user '{cmd.user}'")
        try:
            limits = validate("user-limits", USER_LIMITS, cmd.limits)
        except ValueError as e:
            raise MetadataError(PRECONDITION_FAILED, str(e))
        if not cmd.replace:
            limits = {**self.user_limits.get(cmd.user, {}), **limits}
        _set_or_drop(self.user_limits, cmd.user, limits)
        return "ok"

    def _apply_ClearUserLimits(self, cmd: c.ClearUserLimits) -> Any:
        if cmd.user not in self.users:
            raise MetadataError(NOT_FOUND, f"no user '{cmd.user}'")
        # RabbitMQ's clear_user_limits USER all (and DELETE /api/user-limits/USER/all).
        _clear(self.user_limits, cmd.user, () if "all" in cmd.names else cmd.names)
        return "cleared"

    def _apply_NodeJoined(self, cmd: c.NodeJoined) -> Any:
        known = self.members.get(cmd.node_id)
        self.members[cmd.node_id] = (cmd.cluster_address, cmd.raft_address)
        return "exists" if known == (cmd.cluster_address, cmd.raft_address) else "joined"

    def _apply_NodeLeft(self, cmd: c.NodeLeft) -> Any:
        if self.members.pop(cmd.node_id, None) is None:
            raise MetadataError(NOT_FOUND, f"no node '{cmd.node_id}' in the cluster")
        self.draining.discard(cmd.node_id)
        self.node_features.pop(cmd.node_id, None)
        # A removed node hands nothing over any more (what it still held stays on its disk).
        for vh in self.vhosts.values():
            for q in vh.queues.values():
                if cmd.node_id in q.handing_over:
                    q.handing_over = tuple(n for n in q.handing_over if n != cmd.node_id)
        return "left"

    def _apply_MoveQueue(self, cmd: c.MoveQueue) -> Any:
        q = self.queue(cmd.vhost, cmd.name)
        if q is None:
            raise MetadataError(NOT_FOUND, f"no queue '{cmd.name}' in vhost '{cmd.vhost}'")
        if q.leader != cmd.from_node:
            raise MetadataError(
                PRECONDITION_FAILED,
                f"queue '{cmd.name}' is led by '{q.leader}', not '{cmd.from_node}'",
            )
        if q.exclusive_owner is not None:
            raise MetadataError(
                PRECONDITION_FAILED, f"queue '{cmd.name}' is exclusive to a connection"
            )
        if q.replicated:
            raise MetadataError(
                PRECONDITION_FAILED,
                f"queue '{cmd.name}' is replicated: its leadership changes by election, "
                "not by a move",
            )
        if cmd.to_node == cmd.from_node:
            raise MetadataError(
                PRECONDITION_FAILED, f"queue '{cmd.name}' is already led by '{cmd.to_node}'"
            )
        q.leader = cmd.to_node
        q.moves += 1
        if cmd.from_node not in q.handing_over:
            q.handing_over = (*q.handing_over, cmd.from_node)
        return "moved"

    def _apply_QueueHandedOver(self, cmd: c.QueueHandedOver) -> Any:
        q = self.queue(cmd.vhost, cmd.name)
        if q is None:
            raise MetadataError(NOT_FOUND, f"no queue '{cmd.name}' in vhost '{cmd.vhost}'")
        if cmd.node_id not in q.handing_over:
            return "absent"
        if cmd.moves >= 0 and cmd.moves != q.moves:
            # Proposed before the last MoveQueue: the proposer may hand the queue over again.
            raise MetadataError(
                PRECONDITION_FAILED,
                f"queue '{cmd.name}' moved since node '{cmd.node_id}' said it was handed over",
            )
        q.handing_over = tuple(n for n in q.handing_over if n != cmd.node_id)
        return "handed-over"

    def _replicated(self, vhost: str, name: str, incarnation: str) -> QueueDef:
        q = self._vhost(vhost).queues.get(name)
        if q is None or not q.replicated or q.incarnation != incarnation:
            raise MetadataError(
                NOT_FOUND, f"no replicated queue '{name}' ({incarnation}) in vhost '{vhost}'"
            )
        return q

    def _apply_QueueElection(self, cmd: c.QueueElection) -> Any:
        q = self._replicated(cmd.vhost, cmd.name, cmd.incarnation)
        if cmd.epoch != q.epoch + 1 or q.electing:
            raise MetadataError(
                PRECONDITION_FAILED,
                f"queue '{cmd.name}': no election for epoch {cmd.epoch} (epoch {q.epoch}, "
                f"electing {q.electing})",
            )
        q.electing = cmd.epoch
        return "electing"

    def _apply_QueueLeader(self, cmd: c.QueueLeader) -> Any:
        q = self._replicated(cmd.vhost, cmd.name, cmd.incarnation)
        if cmd.epoch != q.epoch + 1 or cmd.leader not in q.replicas:
            raise MetadataError(
                PRECONDITION_FAILED,
                f"queue '{cmd.name}': '{cmd.leader}' cannot lead epoch {cmd.epoch} "
                f"(epoch {q.epoch}, replicas {', '.join(q.replicas)})",
            )
        q.epoch = cmd.epoch
        q.electing = 0
        q.leader = cmd.leader
        return "leader"

    def _apply_SetQueueReplicas(self, cmd: c.SetQueueReplicas) -> Any:
        q = self._replicated(cmd.vhost, cmd.name, cmd.incarnation)
        new = tuple(cmd.replicas)
        changed = set(new) ^ set(q.replicas)
        if len(new) != len(set(new)) or len(changed) != 1:
            raise MetadataError(
                PRECONDITION_FAILED,
                f"queue '{cmd.name}': replicas change one node at a time "
                f"({', '.join(q.replicas)} -> {', '.join(new)})",
            )
        if q.leader not in new:
            raise MetadataError(
                PRECONDITION_FAILED,
                f"queue '{cmd.name}': its leader '{q.leader}' cannot leave its replicas; "
                "move the leadership first",
            )
        if q.electing:
            raise MetadataError(
                PRECONDITION_FAILED, f"queue '{cmd.name}': an election is under way, try again"
            )
        q.replicas = new
        return "replicas"

    def _apply_SetNodeDraining(self, cmd: c.SetNodeDraining) -> Any:
        if cmd.node_id not in self.members:
            raise MetadataError(NOT_FOUND, f"no node '{cmd.node_id}' in the cluster")
        if cmd.draining == (cmd.node_id in self.draining):
            return "unchanged"
        if cmd.draining:
            self.draining.add(cmd.node_id)
            return "draining"
        self.draining.discard(cmd.node_id)
        return "undrained"

    def _apply_NodeStarted(self, cmd: c.NodeStarted) -> Any:
        """Returns {vhost: [queue names removed]}."""
        removed: dict[str, list[str]] = {}
        # A node that starts again takes new queues again (a drain is for one stop).
        self.draining.discard(cmd.node_id)
        self.node_features[cmd.node_id] = frozenset(cmd.features)
        owner_prefix = cmd.node_id + "/"
        for vh in self.vhosts.values():
            for name, q in list(vh.queues.items()):
                exclusive_here = q.exclusive_owner is not None and q.exclusive_owner.startswith(
                    owner_prefix
                )
                if exclusive_here or (q.leader == cmd.node_id and not q.durable):
                    self._apply_DeleteQueue(c.DeleteQueue(vh.name, name))
                    removed.setdefault(vh.name, []).append(name)
            if cmd.only_member:
                for name, ex in list(vh.exchanges.items()):
                    if not ex.durable and name in vh.exchanges:
                        self._drop_exchange(vh, ex)
        return removed

    def _binding_parts(self, vh: VHost, cmd: c.Bind | c.Unbind) -> tuple[Exchange, Destination]:
        source = vh.exchanges.get(cmd.source)
        if cmd.destination_kind == "q":
            if cmd.destination not in vh.queues:
                raise MetadataError(
                    NOT_FOUND, f"no queue '{cmd.destination}' in vhost '{cmd.vhost}'"
                )
        elif cmd.destination not in vh.exchanges:
            raise MetadataError(
                NOT_FOUND, f"no exchange '{cmd.destination}' in vhost '{cmd.vhost}'"
            )
        if source is None:
            raise MetadataError(NOT_FOUND, f"no exchange '{cmd.source}' in vhost '{cmd.vhost}'")
        return source, (cmd.destination_kind, cmd.destination)

    def _apply_Bind(self, cmd: c.Bind) -> Any:
        vh = self._vhost(cmd.vhost)
        source, dest = self._binding_parts(vh, cmd)
        binding = Binding(
            cmd.source, dest, cmd.routing_key, dict(cmd.arguments), args_key(cmd.arguments)
        )
        if source.add_binding(binding):
            vh.bindings_to.setdefault(dest, set()).add(binding.identity)
            return "created"
        return "exists"

    def _apply_Unbind(self, cmd: c.Unbind) -> Any:
        vh = self._vhost(cmd.vhost)
        source, dest = self._binding_parts(vh, cmd)
        ident = (cmd.source, dest, cmd.routing_key, args_key(cmd.arguments))
        if ident not in source.bindings:
            return "absent"
        self._remove_binding(vh, source, ident)
        return "deleted"

    def _remove_binding(self, vh: VHost, source: Exchange, ident: tuple) -> None:
        binding = source.remove_binding(ident)
        if binding is None:
            return
        idents = vh.bindings_to.get(binding.destination)
        if idents is not None:
            idents.discard(ident)
            if not idents:
                del vh.bindings_to[binding.destination]
        # An auto-delete exchange goes when its last binding (as source) goes, as in RabbitMQ.
        if source.auto_delete and not source.bindings and source.name in vh.exchanges:
            self._drop_exchange(vh, source)


def _set_or_drop(table: dict[str, dict[str, int]], key: str, limits: dict[str, int]) -> None:
    if limits:
        table[key] = limits
    else:
        table.pop(key, None)


def _clear(table: dict[str, dict[str, int]], key: str, names: tuple[str, ...]) -> None:
    """Drop `names` of `key`'s limits (all when empty); a name it has not is no error, as in
    RabbitMQ."""
    if not names:
        table.pop(key, None)
        return
    kept = {k: v for k, v in table.get(key, {}).items() if k not in names}
    _set_or_drop(table, key, kept)


def check_exchange_equivalent(existing: Exchange, cmd: c.DeclareExchange) -> None:
    where = f"for exchange '{cmd.name}' in vhost '{cmd.vhost}'"
    for arg, got, have in (
        ("type", cmd.type, existing.type),
        ("durable", cmd.durable, existing.durable),
        ("auto_delete", cmd.auto_delete, existing.auto_delete),
        ("internal", cmd.internal, existing.internal),
    ):
        if got != have:
            raise MetadataError(
                PRECONDITION_FAILED,
                f"inequivalent arg '{arg}' {where}: received {_describe(got)} but current is {_describe(have)}",
            )
    for arg in ("alternate-exchange",):
        got = _norm_arg(cmd.arguments.get(arg))
        have = _norm_arg(existing.arguments.get(arg))
        if got != have:
            raise MetadataError(
                PRECONDITION_FAILED,
                f"inequivalent arg '{arg}' {where}: received {_describe(got)} but current is {_describe(have)}",
            )


def check_queue_equivalent(existing: QueueDef, cmd: c.DeclareQueue) -> None:
    where = f"for queue '{cmd.name}' in vhost '{cmd.vhost}'"
    for arg, got, have in (
        ("durable", cmd.durable, existing.durable),
        ("auto_delete", cmd.auto_delete, existing.auto_delete),
    ):
        if got != have:
            raise MetadataError(
                PRECONDITION_FAILED,
                f"inequivalent arg '{arg}' {where}: received {_describe(got)} but current is {_describe(have)}",
            )
    for arg in EQUIVALENCE_ARGS:
        got = _norm_arg(cmd.arguments.get(arg))
        have = _norm_arg(existing.arguments.get(arg))
        if got != have:
            got_s = "none" if got is None else f"the value {_describe(got)}"
            have_s = "none" if have is None else f"the value {_describe(have)}"
            raise MetadataError(
                PRECONDITION_FAILED,
                f"inequivalent arg '{arg}' {where}: received {got_s} but current is {have_s}",
            )
