"""The broker core of one node: metadata, the queues this node leads, routing, users.

Protocol front ends call into `Broker`; it never knows which protocol is asking. Metadata changes go
through the `MetadataLog` seam (proposed, then applied); queues are reached through the
`QueueHandle` seam; routing returns queues by name and never knows where a queue lives.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import math
import os
import re
import secrets
from collections.abc import Callable, Iterable
from types import SimpleNamespace
from typing import Any

from .cluster_seam import ClusterSeam, LoneNode
from .core.alarms import Alarms
from .core.deadletter import dead_lettered, is_cycle
from .core.delayed import DelayedMessages, delay_of, pseudo_queue
from .core.limits import (
    ConnectionCounts,
    effective,
    node_connections_exceeded,
    user_channels_exceeded,
    user_connections_exceeded,
    vhost_connections_exceeded,
)
from .core.login_throttle import LoginThrottle
from .core.message import Message
from .core.publish import REFUSED, UNROUTED
from .core.queue import FlowControlled, LocalQueue, MemoryBudget, QueueHandle
from .core.queue_args import BALANCED, QueueOptions, effective_arguments, leader_locator
from .core.queue_args import parse as parse_queue_args
from .core.reply_to import PREFIX as REPLY_PREFIX
from .core.reply_to import ReplyTo
from .core.reply_to import new_name as new_reply_name
from .core.reply_to import node_of as reply_node
from .metadata import commands as cmds
from .metadata.log import LocalLog, MetadataLog
from .metadata.state import MetadataError, MetadataState, QueueDef
from .metrics.counters import NodeCounters
from .routing.exchange import Exchange

log = logging.getLogger("merpati.broker")

ACCESS_REFUSED = 403
# RabbitMQ's consumer_timeout default: 30 minutes.
DEFAULT_CONSUMER_TIMEOUT = 1_800_000
# Handles of reply-to consumers on other nodes kept for the replies that follow (RPC servers
# answer many requests from few clients); the oldest goes beyond this many.
REMOTE_REPLIES = 256
# Longest a 404 waits for this node to apply what the cluster committed before it (caught_up).
CATCH_UP_TIMEOUT = 2.0


def hash_password(password: str, salt: bytes | None = None) -> str:
    """RabbitMQ's rabbit_password_hashing_sha256 format, so definitions move between the two."""
    salt = salt if salt is not None else os.urandom(4)
    digest = hashlib.sha256(salt + password.encode("utf-8")).digest()
    return base64.b64encode(salt + digest).decode("ascii")


def check_password(password: str, password_hash: str) -> bool:
    try:
        raw = base64.b64decode(password_hash)
    except ValueError:
        return False
    salt, digest = raw[:4], raw[4:]
    return hmac.compare_digest(hashlib.sha256(salt + password.encode("utf-8")).digest(), digest)


def generate_queue_name() -> str:
    return "amq.gen-" + base64.urlsafe_b64encode(secrets.token_bytes(16)).decode("ascii").rstrip(
        "="
    )


class AuthError(Exception):
    pass


class Broker:
    def __init__(
        self,
        node_id: str,
        metadata: MetadataLog | None = None,
        loopback_users: Iterable[str] = ("guest",),
        store: Any = None,
        memory_budget: int = 0,
        cluster: ClusterSeam | None = None,
        defer_local_queues: bool = False,
        default_queue_type: str = "classic",
        max_connections: int = 0,
        consumer_timeout: int = DEFAULT_CONSUMER_TIMEOUT,
        queue_leader_locator: str = BALANCED,
    ) -> None:
        self.node_id = node_id
        # Where new queues go unless their arguments or policy say (--queue-leader-locator).
        self.queue_leader_locator = queue_leader_locator
        # Client connections this node accepts at once (--max-connections; 0: no limit).
        self.max_connections = max_connections
        # ms a 0-9-1 delivery may stay unacknowledged (RabbitMQ's consumer_timeout; 0: no
        # limit) where its queue's x-consumer-timeout or consumer-timeout policy says nothing.
        self.consumer_timeout = consumer_timeout
        # The x-queue-type of a queue declared without one (only quorum changes anything),
        # unless its vhost says otherwise (default_queue_type_in).
        self.default_queue_type = default_queue_type
        # Distinguishes this run of the node from earlier ones (exclusive queue owners).
        self.incarnation = secrets.token_hex(4)
        self.store = store
        self.budget = MemoryBudget(memory_budget) if memory_budget else None
        self.delayed: dict[tuple[str, str], DelayedMessages] = {}
        self.recovered = False  # recover() ran: every queue this node leads exists
        # True until recover() runs (the node sets it): a queue this node comes to lead meanwhile
        # (declared or moved here by another node while this one starts) is created by
        # recover(), which refills it from the store. Created earlier, it would take its stored
        # queue id with a fresh sequence counter, write over the rows, and be skipped by recover().
        self.defer_local_queues = defer_local_queues
        self.metadata: MetadataLog = metadata or LocalLog(MetadataState())
        self.state = self.metadata.state
        self.loopback_users = set(loopback_users)
        self.login_throttle = LoginThrottle()
        # vhost -> queue name -> handle of every queue this node can reach.
        self.queues: dict[str, dict[str, QueueHandle]] = {}
        self.connections: set[Any] = set()
        self._regex_cache: dict[str, re.Pattern] = {}
        # Resource alarms of every node (node.core.alarms). Listeners hear the resources in
        # effect anywhere whenever that set changes (empty: publishers may go on); `blocked`
        # and `blocked_by` are that set, read when a connection opens.
        self.alarms = Alarms(node_id)
        self.alarm_listeners: list[Callable[[frozenset[str]], None]] = []
        # This node's clients as its management API shows them, for the other nodes' listings
        # (node.management.views.ClientViews; set by the Node, None in the core's tests).
        self.client_views: Any = None
        self.blocked = False
        self.blocked_by: frozenset[str] = frozenset()
        # Plain integers the hot path bumps; exported at scrape time (node.metrics).
        self.counters = NodeCounters()
        # Direct reply-to consumers of this node's channels, by name (node.core.reply_to), and
        # handles of those on other nodes that replies were routed to lately.
        self.reply_queues: dict[str, ReplyTo] = {}
        # (ready, unacked) of the queues this node leads, as the management API's rate sampler
        # last counted them (node/management/rates.py); the forwarding Ping tells the peers.
        self.led_depth: tuple[int, int] = (0, 0)
        self._remote_replies: dict[str, QueueHandle] = {}
        # Placement, remote queues and queue moves (node.cluster_seam). The cluster side
        # subscribes to applied commands first: a queue's move or deletion reaches it before
        # the broker drops the queue's handle.
        self.cluster: ClusterSeam = cluster if cluster is not None else LoneNode()
        self.cluster.bind(self)
        self.metadata.subscribe(self._on_applied)

    # -- metadata -----------------------------------------------------------------------------

    def propose(self, cmd: cmds.Command) -> asyncio.Future:
        fut = self.metadata.propose(cmd)
        self.counters.time_proposal(fut)
        return fut

    def caught_up(self, timeout: float = CATCH_UP_TIMEOUT) -> asyncio.Future | None:
        """Resolves (with None, whatever happens) once this node has applied every metadata
        command committed before the call, or after `timeout`; None when nothing can be behind
        (a lone node). A front end asks this before answering 404 for a name: the name may be a
        queue or exchange another node created a moment ago, whose declare-ok its client has
        already seen, and whose Raft entry this node has not applied yet. RabbitMQ answers such
        a client as if the declaration were everywhere at once; so does this."""
        barrier = getattr(self.metadata, "barrier", None)
        fut = barrier() if barrier is not None else None
        if fut is None:
            return None
        loop = asyncio.get_running_loop()
        done: asyncio.Future = loop.create_future()

        def finish(f: asyncio.Future | None = None) -> None:
            if f is not None and not f.cancelled():
                f.exception()  # a barrier that failed (no majority) still lets the 404 through
            if not done.done():
                done.set_result(None)

        fut.add_done_callback(finish)
        timer = loop.call_later(timeout, finish)
        done.add_done_callback(lambda _f: timer.cancel())
        return done

    def _on_applied(self, cmd: cmds.Command, result: Any) -> None:
        if isinstance(result, MetadataError):
            return
        if isinstance(cmd, cmds.AddVhost):
            self.queues.setdefault(cmd.name, {})
        elif isinstance(cmd, cmds.DeclareQueue) and result == "created":
            qdef = self.state.queue(cmd.vhost, cmd.name)
            assert qdef is not None
            self.install_queue(qdef)
        elif isinstance(cmd, cmds.DeleteQueue):
            q = self.queues.get(cmd.vhost, {}).pop(cmd.name, None)
            if q is not None:
                q.delete("queue deleted")  # a remote handle cancels its consumers here
        elif isinstance(cmd, (cmds.SetPolicy, cmds.ClearPolicy)):
            self._reapply_policies(cmd.vhost)
        elif isinstance(cmd, cmds.DeleteExchange):
            holder = self.delayed.pop((cmd.vhost, cmd.name), None)
            if holder is not None:
                holder.drop()
        elif isinstance(cmd, cmds.NodeStarted):
            for vhost, names in (result or {}).items():
                for name in names:
                    q = self.queues.get(vhost, {}).pop(name, None)
                    if q is not None:
                        q.delete("transient queue of an earlier run")
        elif isinstance(cmd, cmds.DeleteVhost):
            for q in self.queues.pop(cmd.name, {}).values():
                q.delete("vhost deleted")

    def install_queue(self, qdef: QueueDef) -> QueueHandle | None:
        """Make the handle of a queue the metadata names: a LocalQueue when this node leads it
        (unless recover() will), else the cluster's handle of the queue on its leader."""
        if qdef.replicated:
            if self.defer_local_queues:
                return None  # recover() sets it up
            return self._register(self.cluster.replicated_queue(qdef))
        if qdef.leader == self.node_id:
            return None if self.defer_local_queues else self._create_queue(qdef)
        q = self.cluster.remote_queue(qdef)
        if q is not None:
            self.queues.setdefault(qdef.vhost, {})[qdef.name] = q
        return q

    def _register(self, q: QueueHandle | None) -> QueueHandle | None:
        if q is not None:
            self.queues.setdefault(q.vhost, {})[q.name] = q
        return q

    def _create_queue(self, qdef: QueueDef, store: Any = None) -> LocalQueue:
        """This node's LocalQueue of `qdef`, with the node's store and memory budget, or with
        `store` (a replicated queue's replica log) and everything in memory."""
        q = LocalQueue(
            qdef.vhost,
            qdef.name,
            qdef.durable,
            qdef.exclusive_owner,
            qdef.auto_delete,
            qdef.arguments,
            store=store if store is not None else self.store,
            budget=self.budget if store is None else None,
            options=self.queue_options(qdef.vhost, qdef.name, qdef.arguments),
            leader=self.node_id,
        )
        q.on_unused = self._queue_unused
        q.on_purged = self.cluster.queue_purged
        q.dead_letter = self.dead_letter
        self.queues.setdefault(qdef.vhost, {})[qdef.name] = q
        return q

    def default_queue_type_in(self, vhost: str) -> str:
        """The type of a queue declared in `vhost` without x-queue-type: the vhost's, else the
        node's (RabbitMQ's vhost default_queue_type and default_queue_type setting)."""
        vh = self.state.vhosts.get(vhost)
        return (vh.default_queue_type if vh is not None else "") or self.default_queue_type

    def declare_queue(
        self,
        vhost: str,
        name: str,
        durable: bool = False,
        exclusive_owner: str | None = None,
        auto_delete: bool = False,
        arguments: dict[str, Any] | None = None,
        default_type: str | None = None,
    ) -> cmds.DeclareQueue:
        """The command declaring a queue, with what the proposer decides: the node that leads
        it and, for a replicated (quorum) queue, its replicas and incarnation id
        (`default_type`: of a vhost that does not exist yet, a definitions import's)."""
        args = dict(arguments or {})
        if (
            "x-queue-type" not in args
            and (default_type or self.default_queue_type_in(vhost)) == "quorum"
            and replicated_type({"x-queue-type": "quorum"}, durable, exclusive_owner, auto_delete)
        ):
            # Recorded in the queue's arguments, as RabbitMQ does: a redeclare without the
            # argument is equivalent, and the queue stays quorum if the default changes.
            args["x-queue-type"] = "quorum"
        vh = self.state.vhosts.get(vhost)
        policy = vh.policy_for("queue", name) if vh is not None else None
        locator = leader_locator(
            args, policy.definition if policy else None, self.queue_leader_locator
        )
        leader = self.cluster.place_queue(exclusive_owner is not None, locator)
        replicas: tuple[str, ...] = ()
        incarnation = ""
        if replicated_type(args, durable, exclusive_owner, auto_delete):
            replicas = self.cluster.place_replicas(leader, replica_count(args))
            if replicas:
                incarnation = secrets.token_hex(8)
        return cmds.DeclareQueue(
            vhost, name, durable, exclusive_owner, auto_delete, args, leader, replicas, incarnation
        )

    def queue_options(self, vhost: str, name: str, arguments: dict[str, Any]) -> QueueOptions:
        vh = self.state.vhosts.get(vhost)
        policy = vh.policy_for("queue", name) if vh is not None else None
        return parse_queue_args(
            effective_arguments(arguments, policy.definition if policy else None)
        )

    def consumer_timeout_of(self, q: QueueHandle) -> int | None:
        """The ms a 0-9-1 delivery from `q` may stay unacknowledged, None for no limit: the
        smaller of its x-consumer-timeout and its policy's consumer-timeout, else the node's
        (RabbitMQ 3.12+). The channels ask it when they check their deliveries (and when a
        basic.get makes a channel's oldest delivery), never per delivery."""
        if isinstance(q, LocalQueue):
            # Its options follow its policy (configure): no policy matching here.
            timeout = q.options.consumer_timeout
        else:
            # A queue led elsewhere: the same answer from the replicated metadata.
            qdef = self.state.queue(q.vhost, q.name)
            timeout = (
                self.queue_options(q.vhost, q.name, qdef.arguments).consumer_timeout
                if qdef is not None
                else None
            )
        if timeout is None:
            return self.consumer_timeout or None  # the node's; 0 is none
        return timeout

    def _reapply_policies(self, vhost: str) -> None:
        vh = self.state.vhosts.get(vhost)
        if vh is None:
            return
        for name, q in self.queues.get(vhost, {}).items():
            qdef = vh.queues.get(name)
            if qdef is not None:
                q.configure(self.queue_options(vhost, name, qdef.arguments))

    # -- dead-lettering, alternate exchanges, delayed delivery --------------------------------

    def dead_letter(self, q: Any, msg: Message, reason: str) -> None:
        """A message leaves `q` (rejected, expired, maxlen, delivery_limit): to its DLX if any.
        `q` is the queue, or what stands for it (vhost, name, options) once it has moved away."""
        dlx = q.options.dlx
        if dlx is None:
            return
        vh = self.state.vhosts.get(q.vhost)
        ex = vh.exchanges.get(dlx) if vh is not None else None
        if ex is None:
            return  # RabbitMQ drops what goes to a missing dead-letter exchange, and so do we
        out = dead_lettered(msg, q.name, reason, dlx, q.options.dlrk)
        targets = []
        for target in self.route(q.vhost, ex, out):
            if is_cycle(out, target.name):
                log.debug(
                    "dead-letter cycle: message from %s not re-queued to %s", q.name, target.name
                )
                continue
            targets.append(target)
        if targets:
            self.enqueue(targets, out)

    def delay(self, vhost: str, exchange: Exchange, msg: Message, delay_ms: int) -> int:
        holder = self.delayed.get((vhost, exchange.name))
        if holder is None:
            holder = self.delayed[(vhost, exchange.name)] = DelayedMessages(
                vhost, exchange.name, exchange.durable, self.store, self._deliver_delayed
            )
        return holder.add(msg, delay_ms)

    def _deliver_delayed(self, vhost: str, exchange: str, msg: Message) -> None:
        vh = self.state.vhosts.get(vhost)
        ex = vh.exchanges.get(exchange) if vh is not None else None
        if ex is None:
            return
        queues = self.route(vhost, ex, msg)  # due now: routed, never held again
        if queues:
            self.enqueue(queues, msg)

    def recover(self, stored: dict[tuple[str, str], tuple[int, bool, int]]) -> int:
        """Create the queues this node leads from metadata; refill durable ones from the store.

        Returns the number of messages recovered.
        """
        from .core.queue import PAGE_SIZE

        total = 0
        keep: set[tuple[str, str]] = set()
        for vhost, vh in self.state.vhosts.items():
            self.queues.setdefault(vhost, {})
            for ex in vh.exchanges.values():
                info = stored.get((vhost, pseudo_queue(ex.name)))
                if ex.type == "x-delayed-message" and info is not None and self.store is not None:
                    holder = DelayedMessages(
                        vhost, ex.name, ex.durable, self.store, self._deliver_delayed
                    )
                    rows, count, _max_seq, _size = self.store.load_head(info[0], 1 << 62)
                    holder.recover(rows)
                    self.delayed[(vhost, ex.name)] = holder
                    keep.add((vhost, pseudo_queue(ex.name)))
                    total += count
            for name, qdef in vh.queues.items():
                if name in self.queues[vhost]:
                    continue
                if qdef.replicated:
                    if self.node_id in qdef.replicas:
                        keep.add((vhost, name))
                    self._register(self.cluster.replicated_queue(qdef))
                    continue
                if qdef.leader != self.node_id:
                    self.install_queue(qdef)
                    continue
                q = self._create_queue(qdef)
                keep.add((vhost, name))
                info = stored.get((vhost, name))
                if info is not None and qdef.durable and self.store is not None:
                    qid, _durable, delivered = info
                    rows, count, max_seq, size = self.store.load_head(qid, PAGE_SIZE)
                    q.recover(rows, count, max_seq, delivered, size)
                    total += count
        total += self.cluster.recover(stored, keep)
        if self.store is not None:
            self.store.forget_queues_except(keep)
        self.recovered = True
        self.defer_local_queues = False
        self.cluster.recovered()
        return total

    def _queue_unused(self, q: LocalQueue) -> None:
        if q.deleted:
            return
        fut = self.propose(cmds.DeleteQueue(q.vhost, q.name))
        fut.add_done_callback(_ignore_result)
        q.deleting = fut

    def queue(self, vhost: str, name: str) -> QueueHandle | None:
        vq = self.queues.get(vhost)
        return vq.get(name) if vq else None

    # -- publishing ---------------------------------------------------------------------------

    def publish(
        self,
        vhost: str,
        exchange: Exchange,
        msg: Message,
        confirm: bool = True,
        publisher: FlowControlled | None = None,
    ) -> tuple[int, list[QueueHandle]]:
        """The one publish path of every front end (0-9-1, 1.0, the management API).

        Holds a message for an `x-delayed-message` exchange, else routes it (alternate exchanges
        included) and enqueues it on every queue reached (`enqueue`). Returns (result, queues):
        result is the store token the publisher's confirm waits for (0: safe now), REFUSED when a
        queue refused it, or UNROUTED; queues are where it went (empty when held or unrouted).
        Protocol matters (mandatory returns, confirms, dispositions) stay with the caller.
        """
        if exchange.type == "x-delayed-message":
            delay = delay_of(msg)
            if delay > 0:
                # Held by the exchange until due (and stored, if persistent to a durable one).
                return self.delay(vhost, exchange, msg, delay), []
        queues = self.route(vhost, exchange, msg)
        if not queues:
            return UNROUTED, queues
        return self.enqueue(queues, msg, confirm, publisher), queues

    def enqueue(
        self,
        queues: list[QueueHandle],
        msg: Message,
        confirm: bool = True,
        publisher: FlowControlled | None = None,
    ) -> int:
        """Put `msg` on every queue of `queues` (a copy each beyond the first; the body is shared).

        Returns the store token the confirm waits for (several queues' distinct tokens joined into
        one that fails when any does), or REFUSED when any queue refused the message (x-overflow
        reject-publish, a replica no longer leading: the publisher gets a nack). With
        confirm=False nobody waits for the token, so a queue on another node need not report it.
        A congested queue pauses `publisher` until it drains (credit flow).
        """
        if len(queues) == 1:  # the common case, without the loop's bookkeeping
            q = queues[0]
            token = q.enqueue(msg, confirm)
            if q.congested and publisher is not None:
                q.block_publisher(publisher)
            return token
        token = 0
        others: list[int] | None = None  # tokens beside `token`, when they differ
        refused = False
        first = True
        for q in queues:
            e = q.enqueue(msg if first else msg.copy(), confirm)
            first = False
            if e > 0 and e != token:
                if token:
                    others = [token] if others is None else [*others, token]
                token = e
            elif e < 0:
                refused = True
            if q.congested and publisher is not None:
                q.block_publisher(publisher)
        if refused:
            return REFUSED
        if others is not None and confirm and self.store is not None:
            # A queue on another node (or a replica) and the local store each hold the message
            # under their own token: the confirm waits for them all and fails if any does.
            token = self.store.ledger.join([*others, token])
        return token

    # -- routing ------------------------------------------------------------------------------

    def route(self, vhost: str, exchange: Exchange, msg: Message) -> list[QueueHandle]:
        """The queues a message published to `exchange` reaches (exchange-to-exchange included);
        when none, those its alternate exchange (argument or policy) reaches."""
        out = self._route(vhost, exchange, msg)
        if out or not exchange.name:
            return out
        seen = {exchange.name}
        while True:
            ae = exchange.arguments.get("alternate-exchange")
            if ae is None:
                vh = self.state.vhosts[vhost]
                policy = vh.policy_for("exchange", exchange.name) if vh.policies else None
                ae = policy.definition.get("alternate-exchange") if policy is not None else None
            if isinstance(ae, bytes):
                ae = ae.decode("utf-8", "replace")
            if not ae or ae in seen:
                return out
            seen.add(ae)
            nxt = self.state.vhosts[vhost].exchanges.get(ae)
            if nxt is None:
                return out
            out = self._route(vhost, nxt, msg)
            if out:
                return out
            exchange = nxt

    def _route(self, vhost: str, exchange: Exchange, msg: Message) -> list[QueueHandle]:
        vqueues = self.queues[vhost]
        if not exchange.name:
            q = vqueues.get(msg.routing_key)
            if q is None and msg.routing_key.startswith(REPLY_PREFIX):
                q = self.reply_queue(vhost, msg.routing_key)
            return [q] if q is not None else []
        dests = exchange.route(msg.routing_key, msg.headers)
        if not dests:
            return []
        out: list[QueueHandle] = []
        nested: list[str] | None = None
        for kind, name in dests:
            if kind == "q":
                q = vqueues.get(name)
                if q is not None:
                    out.append(q)
            else:
                if nested is None:
                    nested = []
                nested.append(name)
        if nested:
            self._route_nested(vhost, exchange.name, nested, msg, out)
        return out

    def _route_nested(
        self, vhost: str, origin: str, pending: list[str], msg: Message, out: list[QueueHandle]
    ) -> None:
        vh = self.state.vhosts[vhost]
        vqueues = self.queues[vhost]
        seen_ex = {origin}
        seen_q = {id(q) for q in out}
        while pending:
            name = pending.pop()
            if name in seen_ex:
                continue  # exchange-to-exchange cycles route once
            seen_ex.add(name)
            ex = vh.exchanges.get(name)
            if ex is None:
                continue
            if not ex.name:
                q = vqueues.get(msg.routing_key)
                if q is not None and id(q) not in seen_q:
                    seen_q.add(id(q))
                    out.append(q)
                continue
            for kind, dname in ex.route(msg.routing_key, msg.headers):
                if kind == "q":
                    q = vqueues.get(dname)
                    if q is not None and id(q) not in seen_q:
                        seen_q.add(id(q))
                        out.append(q)
                else:
                    pending.append(dname)

    # -- direct reply-to ----------------------------------------------------------------------

    def open_reply_to(self, vhost: str) -> ReplyTo:
        """A reply-to name for one channel's reply consumer (node.core.reply_to)."""
        q = ReplyTo(vhost, new_reply_name(self.node_id), self.node_id)
        q.on_closed = lambda q: self.reply_queues.pop(q.name, None)
        self.reply_queues[q.name] = q
        return q

    def reply_queue(self, vhost: str, name: str) -> QueueHandle | None:
        """Where a reply to `name` goes: the consumer here, or its node's (None: gone)."""
        q: QueueHandle | None = self.reply_queues.get(name)
        if q is not None:
            return q
        node = reply_node(name)
        if node is None or node == self.node_id:
            return None  # its consumer was here and is gone: routed nowhere, as RabbitMQ
        q = self._remote_replies.get(name)
        if q is None:
            where = SimpleNamespace(vhost=vhost, name=name, leader=node)
            q = self.cluster.remote_queue(where)  # type: ignore[arg-type]
            if q is None:
                return None
            if len(self._remote_replies) >= REMOTE_REPLIES:
                oldest = next(iter(self._remote_replies))
                self._remote_replies.pop(oldest).delete("reply handle evicted")
            self._remote_replies[name] = q
        return q

    # -- users and permissions ----------------------------------------------------------------

    def authenticate(
        self, username: str, password: str, loopback: bool, source: str | None = None
    ) -> str:
        """The user, when the password is right; `source` (the client's address) is throttled
        after repeated failures (node/core/login_throttle.py)."""
        throttled = source is not None and not loopback
        if throttled:
            wait = self.login_throttle.blocked_for(source)
            if wait > 0:
                raise AuthError(
                    f"ACCESS_REFUSED - too many failed logins from {source}; "
                    f"try again in {math.ceil(wait)} s"
                )
        user = self.state.users.get(username)
        if user is None or not check_password(password, user.password_hash):
            if throttled and self.login_throttle.failed(source):
                log.warning(
                    "%d failed logins from %s within %.0f s: its logins are refused for a while",
                    self.login_throttle.limit,
                    source,
                    self.login_throttle.window,
                )
            raise AuthError(
                f"ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN. For details see the broker logfile. (user '{username}')"
            )
        if username in self.loopback_users and not loopback:
            raise AuthError(f"ACCESS_REFUSED - user '{username}' can only connect via localhost")
        return username

    def authenticate_external(self, cert_user: str | None, loopback: bool) -> str:
        """SASL EXTERNAL: the user named by the verified client certificate (its subject CN),
        which must exist; no password is asked (RabbitMQ's rabbitmq_auth_mechanism_ssl)."""
        if not cert_user:
            raise AuthError(
                "ACCESS_REFUSED - EXTERNAL authentication needs a verified TLS client certificate"
            )
        if cert_user not in self.state.users:
            raise AuthError(
                f"ACCESS_REFUSED - Login was refused using authentication mechanism EXTERNAL: "
                f"no user '{cert_user}' (the client certificate's common name)"
            )
        if cert_user in self.loopback_users and not loopback:
            raise AuthError(f"ACCESS_REFUSED - user '{cert_user}' can only connect via localhost")
        return cert_user

    def vhost_allowed(self, user: str, vhost: str) -> bool:
        return (user, vhost) in self.state.permissions

    def _allowed(self, user: str, vhost: str, kind: str, resource: str) -> bool:
        perm = self.state.permissions.get((user, vhost))
        if perm is None:
            return False
        pattern = getattr(perm, kind)
        if pattern == ".*":
            return True
        if pattern == "":
            return False
        rx = self._regex_cache.get(pattern)
        if rx is None:
            rx = self._regex_cache[pattern] = re.compile(pattern)
        return rx.fullmatch(resource) is not None

    def check(self, user: str, vhost: str, kind: str, resource_kind: str, resource: str) -> None:
        """Raise 403 unless `user` has `kind` (configure/write/read) access to the resource."""
        if not self._allowed(user, vhost, kind, resource):
            raise MetadataError(
                ACCESS_REFUSED,
                f"access to {resource_kind} '{resource}' in vhost '{vhost}' refused for user '{user}'",
            )

    # -- resource limits (node/core/limits.py) ------------------------------------------------

    def connection_counts(self) -> ConnectionCounts:
        """This node's client connections per vhost and per user, and 0-9-1 channels per user
        (what this node tells the others in its forwarding pings)."""
        counts = ConnectionCounts()
        vhosts, users, channels = (
            counts.vhost_connections,
            counts.user_connections,
            counts.user_channels,
        )
        for conn in self.connections:
            vhosts[conn.vhost] = vhosts.get(conn.vhost, 0) + 1
            users[conn.user] = users.get(conn.user, 0) + 1
            # AMQP 1.0 sessions are not channels here: RabbitMQ 4 counts only 0-9-1 channels
            # toward max-channels (1.0 has session_max_per_connection instead).
            n = len(getattr(conn, "channels", ()))
            if n:
                channels[conn.user] = channels.get(conn.user, 0) + n
        return counts

    def _cluster_count(self, table: str, key: str, here: int) -> int:
        """`here` (this node's own count, exact) plus what the other nodes last reported."""
        return here + getattr(self.cluster.peer_counts(), table).get(key, 0)

    def check_connection(self, user: str, vhost: str) -> None:
        """Raise LimitExceeded if a new connection of `user` to `vhost` would go beyond the
        node's --max-connections, the vhost's or the user's max-connections; checked in
        RabbitMQ's order (node, vhost, user) when the client opens the vhost. Counts are of
        connections already open: the one asking is not among them yet.

        This node's connections are counted exactly (the check and the connection's
        registration run in the same loop turn); other nodes' are as their last ping said, up
        to about a second old, so connections opened at the same moment on two nodes can both
        take the last place, as with RabbitMQ's own (asynchronous) connection tracking."""
        if self.max_connections > 0 and len(self.connections) >= self.max_connections:
            raise node_connections_exceeded(self.max_connections)
        limit = effective(self.state.vhost_limits.get(vhost), "max-connections")
        if limit is not None:
            here = sum(1 for c in self.connections if c.vhost == vhost)
            if self._cluster_count("vhost_connections", vhost, here) >= limit:
                raise vhost_connections_exceeded(vhost, user, limit)
        limit = effective(self.state.user_limits.get(user), "max-connections")
        if limit is not None:
            here = sum(1 for c in self.connections if c.user == user)
            if self._cluster_count("user_connections", user, here) >= limit:
                raise user_connections_exceeded(user, limit)

    def check_channel(self, user: str) -> None:
        """Raise LimitExceeded if a new 0-9-1 channel of `user` would go beyond its
        max-channels (over all its connections, counted as in check_connection)."""
        limit = effective(self.state.user_limits.get(user), "max-channels")
        if limit is None:
            return
        here = sum(len(getattr(c, "channels", ())) for c in self.connections if c.user == user)
        if self._cluster_count("user_channels", user, here) >= limit:
            raise user_channels_exceeded(user, limit)

    # -- resource alarms ----------------------------------------------------------------------

    def set_alarm(self, resource: str, raised: bool) -> None:
        """This node's monitor of `resource` (memory, disk) raised or cleared its alarm."""
        if not self.alarms.set_local(resource, raised):
            return
        if raised:
            log.warning(
                "%s resource limit alarm set on node %s: publishers are blocked until it clears",
                resource,
                self.node_id,
            )
        else:
            log.warning("%s resource limit alarm cleared on node %s", resource, self.node_id)
        self._alarms_changed()

    def set_remote_alarms(self, node: str, resources: Iterable[str]) -> None:
        """The alarms `node` reports now (cluster/forwarding: its Ping answers); empty when it
        has none, or is down or gone (its alarms do not outlive it, as in RabbitMQ)."""
        old = self.alarms.remote.get(node, frozenset())
        if not self.alarms.set_remote(node, resources):
            return
        new = self.alarms.remote.get(node, frozenset())
        for r in sorted(new - old):
            log.warning("%s resource limit alarm set on node %s: publishers are blocked", r, node)
        for r in sorted(old - new):
            log.warning("%s resource limit alarm cleared on node %s", r, node)
        self._alarms_changed()

    def _alarms_changed(self) -> None:
        in_effect = self.alarms.in_effect()
        if in_effect == self.blocked_by:
            return  # e.g. a second node with the same alarm: connections stay as they are
        self.blocked_by = in_effect
        self.blocked = bool(in_effect)
        if not in_effect:
            log.warning("resource limit alarms cleared across the cluster: publishers resume")
        for listener in list(self.alarm_listeners):
            listener(in_effect)


def replicated_type(
    arguments: dict[str, Any], durable: bool, exclusive_owner: str | None, auto_delete: bool
) -> bool:
    """A queue that gets replicas: `x-queue-type: quorum`, durable, neither exclusive nor
    auto-delete. Front ends refuse a new quorum queue with those properties as RabbitMQ does
    (core/declare.py check_quorum_declare); a command that still carries one (proposed by an
    older node, or in a log written before) keeps the queue a single copy."""
    qtype = arguments.get("x-queue-type")
    if isinstance(qtype, bytes):
        qtype = qtype.decode("utf-8", "replace")
    return qtype == "quorum" and durable and exclusive_owner is None and not auto_delete


def replica_count(arguments: dict[str, Any]) -> int:
    """x-quorum-initial-group-size, else 3 (as RabbitMQ)."""
    size = arguments.get("x-quorum-initial-group-size")
    try:
        n = int(size) if size is not None and not isinstance(size, bool) else 3
    except (TypeError, ValueError):
        n = 3
    return max(1, n)


def _ignore_result(fut: asyncio.Future) -> None:
    if not fut.cancelled():
        exc = fut.exception()
        if exc is not None and not isinstance(exc, MetadataError):
            log.error("metadata command failed: %s", exc)
