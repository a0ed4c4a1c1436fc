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
import os
import re
import secrets
from collections.abc import Callable, Iterable
from types import SimpleNamespace
from typing import Any

from .core.deadletter import dead_lettered, is_cycle
from .core.delayed import DelayedMessages, pseudo_queue
from .core.handover import WINDOW as HANDOVER_WINDOW
from .core.handover import Handover
from .core.message import Message
from .core.queue import LocalQueue, MemoryBudget, QueueHandle
from .core.queue_args import QueueOptions, effective_arguments
from .core.queue_args import parse as parse_queue_args
from .metadata import commands as cmds
from .metadata.log import LocalLog, MetadataLog
from .metadata.state import MetadataError, MetadataState, QueueDef
from .metrics.counters import NodeCounters
from .routing.exchange import Exchange

log = logging.getLogger("merpati.broker")

ACCESS_REFUSED = 403


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
    ) -> None:
        self.node_id = node_id
        # Distinguishes this run of the node from earlier ones (exclusive queue owners).
        self.incarnation = secrets.token_hex(4)
        self.store = store
        self.budget = MemoryBudget(memory_budget) if memory_budget else None
        self.delayed: dict[tuple[str, str], DelayedMessages] = {}
        # In a cluster: makes the QueueHandle of a queue led by another node (cluster wiring sets
        # it; the broker never knows how a remote queue is reached).
        self.remote_queue_factory: Callable[[QueueDef], QueueHandle] | None = None
        # The links to the other nodes (cluster.forwarding's Forwarding; None on a lone node).
        self.forwarding: Any = None
        # Chooses the leader node of a new queue (exclusive -> this node); the cluster replaces it.
        self.place_queue: Callable[[bool], str] = lambda exclusive: self.node_id
        self.cluster: Any = None
        # Queues moved away whose messages are still on their way to the new leader.
        self.handovers: set[Handover] = set()
        self.handover_window = HANDOVER_WINDOW
        # True for a queue's consumer that stands for one on another node (a forwarding stream):
        # a handover leaves it to that node, which cancels it itself. The cluster wiring sets it.
        self.forwarded_consumer: Callable[[Any], bool] = lambda consumer: False
        self.recovered = False  # recover() ran: every queue this node leads exists
        # Set by the node until recover() runs: a queue this node comes to lead meanwhile (declared
        # or moved here by another node while this one starts) is created by recover(), which
        # refills it from the store. Created earlier, it would take its stored queue id with a
        # fresh sequence counter, write over the rows, and be skipped by recover().
        self.defer_local_queues = False
        self._proposals: set[asyncio.Task] = set()
        self.metadata: MetadataLog = metadata or LocalLog(MetadataState())
        self.state = self.metadata.state
        self.loopback_users = set(loopback_users)
        # vhost -> queue name -> handle of every queue this node can reach.
        self.queues: dict[str, dict[str, QueueHandle]] = {}
        self.connections: set[Any] = set()
        self._regex_cache: dict[str, re.Pattern] = {}
        self.alarm_listeners: list[Callable[[bool], None]] = []
        self.blocked = False
        # Plain integers the hot path bumps; exported at scrape time (node.metrics).
        self.counters = NodeCounters()
        self.metadata.subscribe(self._on_applied)

    # -- metadata -----------------------------------------------------------------------------

    def propose(self, cmd: cmds.Command) -> asyncio.Future:
        fut = self.metadata.propose(cmd)
        self.counters.time_proposal(fut)
        return fut

    def _on_applied(self, cmd: cmds.Command, result: Any) -> None:
        if isinstance(result, MetadataError):
            return
        if isinstance(cmd, cmds.AddVhost):
            self.queues.setdefault(cmd.name, {})
        elif isinstance(cmd, cmds.DeclareQueue) and result == "created":
            qdef = self.state.queue(cmd.vhost, cmd.name)
            assert qdef is not None
            if cmd.leader == self.node_id:
                if not self.defer_local_queues:
                    self._create_queue(qdef)
            elif self.remote_queue_factory is not None:
                self.queues.setdefault(qdef.vhost, {})[qdef.name] = self.remote_queue_factory(qdef)
        elif isinstance(cmd, cmds.DeleteQueue):
            self._abort_handovers(cmd.vhost, cmd.name)
            q = self.queues.get(cmd.vhost, {}).pop(cmd.name, None)
            if isinstance(q, LocalQueue):
                q.delete("queue deleted")
            elif q is not None:
                q.delete("queue deleted")  # a remote handle: cancels its consumers here
        elif isinstance(cmd, cmds.MoveQueue) and result == "moved":
            self._move_queue(cmd)
        elif isinstance(cmd, (cmds.NodeJoined, cmds.NodeLeft)) and self.cluster is not None:
            self.cluster.membership_changed(cmd, result)
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
                    if isinstance(q, LocalQueue):
                        q.delete("transient queue of an earlier run")
        elif isinstance(cmd, cmds.DeleteVhost):
            self._abort_handovers(cmd.name, None)
            for q in self.queues.pop(cmd.name, {}).values():
                q.delete("vhost deleted")

    def _create_queue(self, qdef: QueueDef) -> LocalQueue:
        q = LocalQueue(
            qdef.vhost,
            qdef.name,
            qdef.durable,
            qdef.exclusive_owner,
            qdef.auto_delete,
            qdef.arguments,
            store=self.store,
            budget=self.budget,
            options=self._queue_options(qdef.vhost, qdef.name, qdef.arguments),
        )
        q.on_unused = self._queue_unused
        q.on_purged = self._queue_purged
        q.dead_letter = self._dead_letter
        self.queues.setdefault(qdef.vhost, {})[qdef.name] = q
        return q

    def _move_queue(self, cmd: cmds.MoveQueue) -> None:
        """Leadership moved: the new leader's handle replaces the old one here, and the old
        leader hands over everything it holds of the queue (node.core.handover)."""
        vq = self.queues.setdefault(cmd.vhost, {})
        old = vq.pop(cmd.name, None)
        qdef = self.state.queue(cmd.vhost, cmd.name)
        if qdef is None:
            return
        if cmd.to_node == self.node_id:
            if not self.defer_local_queues:
                self._create_queue(qdef)
        elif self.remote_queue_factory is not None:
            vq[cmd.name] = self.remote_queue_factory(qdef)
        if isinstance(old, LocalQueue):
            self._hand_over(old, f"moved to node '{cmd.to_node}'")
        elif old is not None:
            old.delete(f"queue moved to node '{cmd.to_node}'")  # cancels its consumers here
        if cmd.from_node == self.node_id and not isinstance(old, LocalQueue) and self.recovered:
            self._check_handed_over(cmd.vhost, cmd.name)  # nothing of it here

    # -- handing moved queues over --------------------------------------------------------------

    def _handover(self, vhost: str, name: str, store: Any, qid: int) -> Handover:
        def resolve() -> QueueHandle | None:
            return self.queue(vhost, name) if self.state.queue(vhost, name) else None

        h = Handover(vhost, name, store, qid, resolve, self._handover_done, self.handover_window)
        self.handovers.add(h)
        return h

    def _hand_over(self, q: LocalQueue, reason: str) -> None:
        h = self._handover(q.vhost, q.name, q.store, q.qid)
        h.take_queue(q, self.forwarded_consumer, reason)

    def purge_handover(self, vhost: str, name: str) -> int | None:
        """Purge what a handover of this queue still holds here (None: no handover of it)."""
        for h in list(self.handovers):
            if h.vhost == vhost and h.name == name and not h.done:
                return h.purge()
        return None

    def _queue_purged(self, q: LocalQueue) -> None:
        """A queue this node leads was purged: nodes still handing it over purge their part."""
        qdef = self.state.queue(q.vhost, q.name)
        for node in qdef.handing_over if qdef is not None else ():
            if node == self.node_id:
                self.purge_handover(q.vhost, q.name)  # moved away and back while handing over
                continue
            fw = self.forwarding
            peer = fw.peer(node) if fw is not None else None
            if peer is not None:
                peer.purge_handover(q.vhost, q.name)

    def _abort_handovers(self, vhost: str, name: str | None) -> None:
        for h in list(self.handovers):
            if h.vhost == vhost and (name is None or h.name == name):
                h.abort("the queue was deleted")

    def _handover_done(self, h: Handover) -> None:
        self.handovers.discard(h)
        if not h.aborted:
            log.info("queue '%s' in vhost '%s' handed over (%d messages)", h.name, h.vhost, h.moved)
            self._check_handed_over(h.vhost, h.name)

    def _check_handed_over(self, vhost: str, name: str) -> None:
        """Tell the cluster this node holds nothing more of a queue it led (QueueHandedOver),
        once its last handover of it is done."""
        qdef = self.state.queue(vhost, name)
        if qdef is None or self.node_id not in qdef.handing_over:
            return
        if any(h.vhost == vhost and h.name == name for h in self.handovers):
            return
        cmd = cmds.QueueHandedOver(vhost, name, self.node_id, qdef.moves)
        task = asyncio.ensure_future(self._propose_patiently(cmd))
        self._proposals.add(task)
        task.add_done_callback(self._proposals.discard)

        def stale(task: asyncio.Future) -> None:
            # Refused because the queue moved meanwhile: say it again if still true (a move
            # away from this node started a new handover, which says it when done).
            current = self.state.queue(vhost, name)
            if not task.cancelled() and task.result() == "refused" and current is not None:
                if current.moves != cmd.moves:
                    self._check_handed_over(vhost, name)

        task.add_done_callback(stale)

    async def _propose_patiently(self, cmd: cmds.Command, attempts: int = 30) -> str:
        """Propose, trying again while the metadata log cannot take it (no Raft leader).
        Returns "applied", "refused" (applied with a MetadataError) or "failed"."""
        for _ in range(attempts):
            try:
                await self.propose(cmd)
                return "applied"
            except MetadataError:
                return "refused"  # applied with a verdict (e.g. the queue is gone): no retry
            except Exception as e:  # noqa: BLE001 - Raft unavailable or stopping
                log.debug("%s not committed yet: %s", type(cmd).__name__, e)
                await asyncio.sleep(1.0)
        return "failed"

    async def wait_handovers(self, timeout: float) -> bool:
        """Wait (up to `timeout` s) until every handover is done; True when none is left."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.handovers and loop.time() < deadline:
            await asyncio.sleep(0.05)
        if self._proposals:
            await asyncio.wait(set(self._proposals), timeout=max(0.1, deadline - loop.time()))
        return not self.handovers

    def _queue_options(self, vhost: str, name: str, arguments: dict[str, Any]) -> QueueOptions:
        vh = self.state.vhosts.get(vhost)
        policy = vh.policy_for("queue", name) if vh is not None else None
        return parse_queue_args(
            effective_arguments(arguments, policy.definition if policy else None)
        )

    def _reapply_policies(self, vhost: str) -> None:
        vh = self.state.vhosts.get(vhost)
        if vh is None:
            return
        for name, q in self.queues.get(vhost, {}).items():
            qdef = vh.queues.get(name)
            if isinstance(q, LocalQueue) and qdef is not None:
                q.configure(self._queue_options(vhost, name, qdef.arguments))

    # -- dead-lettering, alternate exchanges, delayed delivery --------------------------------

    def _dead_letter(self, q: LocalQueue, msg: Message, reason: str) -> None:
        """A message leaves `q` (rejected, expired, maxlen, delivery_limit): to its DLX if any."""
        dlx = q.options.dlx
        if dlx is None:
            return
        vh = self.state.vhosts.get(q.vhost)
        ex = vh.exchanges.get(dlx) if vh is not None else None
        if ex is None:
            return  # RabbitMQ drops what goes to a missing dead-letter exchange, and so do we
        out = dead_lettered(msg, q.name, reason, dlx, q.options.dlrk)
        first = True
        for target in self.route(q.vhost, ex, out):
            if is_cycle(out, target.name):
                log.debug(
                    "dead-letter cycle: message from %s not re-queued to %s", q.name, target.name
                )
                continue
            target.enqueue(out if first else out.copy())
            first = False

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
        first = True
        for q in self.route(vhost, ex, msg):
            q.enqueue(msg if first else msg.copy())
            first = False

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
                if qdef.leader != self.node_id:
                    if self.remote_queue_factory is not None:
                        self.queues[vhost][name] = self.remote_queue_factory(qdef)
                    continue
                q = self._create_queue(qdef)
                keep.add((vhost, name))
                info = stored.get((vhost, name))
                if info is not None and qdef.durable and self.store is not None:
                    qid, _durable, delivered = info
                    rows, count, max_seq, size = self.store.load_head(qid, PAGE_SIZE)
                    q.recover(rows, count, max_seq, delivered, size)
                    total += count
        total += self._recover_leftovers(stored, keep)
        if self.store is not None:
            self.store.forget_queues_except(keep)
        self.recovered = True
        self.defer_local_queues = False
        for vhost, vh in self.state.vhosts.items():
            for name, qdef in vh.queues.items():
                if self.node_id in qdef.handing_over:
                    self._check_handed_over(vhost, name)
        return total

    def _recover_leftovers(
        self, stored: dict[tuple[str, str], tuple[int, bool, int]], keep: set[tuple[str, str]]
    ) -> int:
        """Stored rows of queues this node no longer leads (a crash cut a handover short, or the
        move was applied while the node was down) go to the queue's leader now."""
        from .store.sqlite import handover_name

        total = 0
        for (vhost, stored_name), (qid, durable, _delivered) in stored.items():
            name, detached = handover_name(stored_name)
            qdef = self.state.queue(vhost, name)
            if qdef is None or not durable or self.store is None:
                continue  # the queue is gone (forget_queues_except drops its rows)
            if not detached and qdef.leader == self.node_id:
                continue  # recovered as this node's queue above
            if self.node_id not in qdef.handing_over:
                # Not a queue this node still hands over (only a MoveQueue from this node puts
                # it there): the rows belong to a queue deleted while the node was down, or cut
                # short (crash) after being confirmed all; a queue of that name now is another
                # one. forget_queues_except drops them.
                continue
            count = self.store.load_head(qid, 0)[1]
            keep.add((vhost, stored_name))
            if not count:
                self.store.drop_queue(qid)
                continue
            log.info(
                "handing %d stored messages of queue '%s' in vhost '%s' to node %s",
                count,
                name,
                vhost,
                qdef.leader,
            )
            h = self._handover(vhost, name, self.store, qid)
            # What expires before it leaves is dead-lettered as the queue would (its options
            # as of now: the queue of this node that had them is gone).
            like = SimpleNamespace(
                vhost=vhost, name=name, options=self._queue_options(vhost, name, qdef.arguments)
            )
            h.dead_letter = lambda msg, reason, like=like: self._dead_letter(like, msg, reason)
            h.take_stored(count)
            total += count
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

    # -- users and permissions ----------------------------------------------------------------

    def authenticate(self, username: str, password: str, loopback: bool) -> str:
        user = self.state.users.get(username)
        if user is None or not check_password(password, user.password_hash):
            raise AuthError(
                f"ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN. For details see the broker logfile. (user '{username}')"
            )
        if username in self.loopback_users and not loopback:
            raise AuthError(f"ACCESS_REFUSED - user '{username}' can only connect via localhost")
        return username

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

    # -- resource alarms ----------------------------------------------------------------------

    def set_alarm(self, raised: bool) -> None:
        if raised == self.blocked:
            return
        self.blocked = raised
        log.warning("memory alarm %s", "raised: blocking publishers" if raised else "cleared")
        for listener in list(self.alarm_listeners):
            listener(raised)


def _ignore_result(fut: asyncio.Future) -> None:
    if not fut.cancelled():
        exc = fut.exception()
        if exc is not None and not isinstance(exc, MetadataError):
            log.error("metadata command failed: %s", exc)
