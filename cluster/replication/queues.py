"""Replicated queues on this node: the replicas it holds, the broker's handles of the queues,
and what the metadata's replication commands mean here.

Theory of operation. The metadata names, per replicated queue, its replicas, its leader and the
leader's epoch (node/metadata/state.py). Every node applies the same commands:
- DeclareQueue: each replica opens (member.py); the leader leads epoch 1, the others follow it.
- QueueElection (the controller starts choosing a new leader, controller.py): every replica
  fences itself at the election's epoch at once.
- QueueLeader: the named replica leads the epoch, loads the queue's state (its rows and its
  log's unapplied suffix) into a LocalQueue, and the broker's handle of the queue becomes that
  LocalQueue there and a RemoteQueue for the new leader elsewhere. Consumers of the old handle
  move to the new one without being cancelled; what they held unsettled comes again,
  redelivered.
- DeleteQueue: the replicas drop their data.

A node that (re)starts never leads again in the epoch it led before it stopped: followers may
hold entries it sent and never made durable, and would take different entries of the same
epoch at the same offsets for the same ones. It asks for an election instead (only a queue with
a single replica, which has no one to disagree with, carries on at once).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from merpati.node.core.outcome import Outcome
from merpati.node.metadata import commands as cmds
from merpati.node.metadata.state import MetadataError, QueueDef

from .controller import Controller
from .links import ReplicaLinks, ReplicationServicer
from .member import QueueReplica
from .remote import ReplicatedRemoteQueue

# How long a new leader waits before it delivers again what its predecessor had delivered: the
# settlements of those deliveries (forwarded by the other nodes once they learn of it) come first.
HOLD_BACK = 0.5
# How long the deliveries to a consumer on another node whose stream broke wait before they go
# again: that node sends again the acks it made lately once it sees this one up, which its pings
# (forwarding's PING_INTERVAL + PING_TIMEOUT) notice within this long of a pause or a partition
# ending.
RELEASE_DELAY = 3.0
# A loop turn this much later than asked means the process was paused (SIGSTOP, a frozen VM) or
# starved: another replica may lead by now and have delivered the same messages. What this
# node's queues hold ready waits until the metadata says who leads (a deposed leader's queue is
# closed meanwhile and delivers nothing): until a Raft barrier proposed on waking has applied
# here, so every leader change committed before it has too (at most HOLD_MAX_AFTER_STALL, when
# no majority answers), or HOLD_AFTER_STALL where the log cannot take a barrier (an older
# member). A fixed 1.5 s alone was once too short in CI: the woken node heard of the new
# leader 1.6 s after waking, and delivered what the new leader had delivered and had acked.
STALL = 1.0
STALL_CHECK = 0.2
HOLD_AFTER_STALL = 1.5
HOLD_MAX_AFTER_STALL = 30.0

if TYPE_CHECKING:
    from merpati.node.broker import Broker

log = logging.getLogger("merpati.replication")


class ReplicatedQueues:
    def __init__(self, node_id: str, live: Any, is_controller: Any) -> None:
        self.node_id = node_id
        self.broker: Broker | None = None
        self.forwarding: Any = None
        self.links = ReplicaLinks(node_id, self._peer)
        self.controller = Controller(self, live, is_controller)
        self._proposals: set[asyncio.Task] = set()
        self._stall_watch: asyncio.Task | None = None

    def _peer(self, node: str) -> Any:
        fw = self.forwarding
        return fw.peer(node) if fw is not None else None

    def bind(self, broker: Broker) -> None:
        self.broker = broker
        broker.metadata.subscribe(self._on_applied)

    def servicer(self, caller: Any) -> ReplicationServicer:
        return ReplicationServicer(self.links, caller)

    def start(self) -> None:
        self.controller.start()
        self._stall_watch = asyncio.ensure_future(self._watch_stalls())

    async def stop(self) -> None:
        if self._stall_watch is not None:
            self._stall_watch.cancel()
        await self.controller.stop()
        for member in list(self.links.members.values()):
            member.close(drop=False)
        await self.links.close()
        for task in list(self._proposals):
            task.cancel()

    async def _watch_stalls(self) -> None:
        # uvloop runs due timers before it reads sockets, so after a pause this runs before the
        # clients' buffered acks and credit can make a queue deliver.
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            await asyncio.sleep(STALL_CHECK)
            now = loop.time()
            if now - last > STALL + STALL_CHECK:
                self._stalled(now - last)
            last = now

    def _stalled(self, gap: float) -> None:
        broker = self.broker
        if broker is None or len(broker.state.members) < 2:
            return
        held = []
        for vhost, queues in broker.queues.items():
            for name, q in queues.items():
                qdef = broker.state.queue(vhost, name)
                if qdef is not None and qdef.replicated and q.led_here and q.message_count:
                    held.append(q)
        if not held:
            return
        barrier = getattr(broker.metadata, "barrier", None)
        caught_up = barrier() if barrier is not None else None
        hold = HOLD_AFTER_STALL if caught_up is None else HOLD_MAX_AFTER_STALL
        for q in held:
            q.hold_back(q.last_seq, hold)
        log.warning(
            "this node was stalled for %.1f s: %d quorum queue(s) it led wait %s before "
            "delivering (another replica may lead them now)",
            gap,
            len(held),
            "for the metadata to catch up" if caught_up is not None else f"{hold:.1f} s",
        )
        if caught_up is not None:

            def give_back(f: asyncio.Future) -> None:
                if not f.cancelled() and f.exception() is not None:
                    return  # no majority: the timer gives them back (as before the barrier)
                for q in held:
                    q.give_back_held()  # a deposed leader's queue is closed: it delivers nothing

            caught_up.add_done_callback(give_back)

    # -- placement --------------------------------------------------------------------------------

    @staticmethod
    def place(state: Any, members: list[str], live: set[str], leader: str, count: int) -> tuple:
        """`leader` and count - 1 other members (live ones first, holding the fewest replicas)."""
        held = dict.fromkeys(members, 0)
        for vh in state.vhosts.values():
            for q in vh.queues.values():
                for r in q.replicas:
                    if r in held:
                        held[r] += 1
        others = sorted(
            (m for m in members if m != leader), key=lambda m: (m not in live, held[m], m)
        )
        return (leader, *others[: max(0, count - 1)])

    # -- the broker's handles ---------------------------------------------------------------------

    def handle(self, qdef: QueueDef) -> Any:
        """The broker's handle of a replicated queue (see ClusterSeam.replicated_queue)."""
        broker = self.broker
        assert broker is not None
        member = self._member(qdef)
        if qdef.leader == self.node_id and member is not None:
            restart = not broker.recovered
            if restart and len(qdef.replicas) > 1:
                # Not the same epoch again (module docstring): ask for an election; the queue
                # waits for it (publishes are refused, consumers wait).
                self._propose(
                    cmds.QueueElection(qdef.vhost, qdef.name, qdef.incarnation, qdef.epoch + 1)
                )
                return self._remote(qdef)
            if member.lead(qdef.epoch) or member.replica.leads:
                return self._local(qdef, member)
            return self._remote(qdef)
        if member is not None and qdef.leader != self.node_id:
            member.follow(qdef.epoch, qdef.leader)
        return self._remote(qdef)

    def _member(self, qdef: QueueDef) -> QueueReplica | None:
        if self.node_id not in qdef.replicas:
            return None
        key = (qdef.vhost, qdef.name, qdef.incarnation)
        member = self.links.member(key)
        if member is None:
            broker = self.broker
            assert broker is not None
            member = QueueReplica(self.links, qdef, self.node_id, broker.store, broker.store.ledger)
            member.open(max(qdef.epoch, qdef.electing))
            self.links.add(member)
        return member

    def _local(self, qdef: QueueDef, member: QueueReplica) -> Any:
        """The LocalQueue of a replica that now leads, filled from its state."""
        broker = self.broker
        assert broker is not None
        rows, maybe_delivered, delivered, max_seq, counts = member.load_rows()
        q = broker._create_queue(qdef, store=member.leader_store())
        q.recover(rows, len(rows), max_seq, maybe_delivered, sum(len(r[4]) for r in rows), counts)
        if len(broker.state.members) > 1:  # alone, no other node can hold its deliveries
            q.hold_back(delivered, HOLD_BACK)
            q.release_delay = RELEASE_DELAY
        log.info(
            "queue '%s' in vhost '%s': leading epoch %d with %d messages",
            qdef.name,
            qdef.vhost,
            member.replica.epoch,
            len(rows),
        )
        return q

    def _remote(self, qdef: QueueDef) -> Any:
        fw = self.forwarding
        if fw is None:
            return None
        broker = self.broker
        assert broker is not None
        return ReplicatedRemoteQueue(qdef.vhost, qdef.name, qdef.leader, fw, broker.store.ledger)

    async def transfer(self, node: str, timeout: float) -> list[tuple[str, str]]:
        """Ask for an election of every replicated queue `node` leads (a drain, or the node
        stopping), and wait up to `timeout` s until another replica leads each; returns those
        it still leads (its followers were behind, or no majority answered)."""
        broker = self.broker
        assert broker is not None

        def led() -> list[Any]:
            return [
                q
                for vh in broker.state.vhosts.values()
                for q in vh.queues.values()
                if q.replicated and q.leader == node and len(q.replicas) > 1
            ]

        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        for q in led():
            if not q.electing:
                cmd = cmds.QueueElection(q.vhost, q.name, q.incarnation, q.epoch + 1)
                try:
                    # Bounded: without a Raft majority a proposal waits, and a stopping node
                    # must not.
                    await asyncio.wait_for(broker.propose(cmd), max(0.1, deadline - loop.time()))
                except MetadataError:
                    pass  # an election is under way already
                except TimeoutError:
                    break
        while loop.time() < deadline and any(q.electing for q in led()):
            await asyncio.sleep(0.05)
        return [(q.vhost, q.name) for q in led()]

    async def quorum_status(self, qdef: QueueDef) -> dict[str, Any]:
        """Every replica of a queue as it reports itself (the leader's adds each follower's lag)."""
        key = (qdef.vhost, qdef.name, qdef.incarnation)
        found = await asyncio.gather(*(self.links.status(n, key) for n in qdef.replicas))
        leader_view = dict(zip(qdef.replicas, found, strict=True)).get(qdef.leader) or {}
        followers = leader_view.get("followers", {})
        members = []
        for node, st in zip(qdef.replicas, found, strict=True):
            row: dict[str, Any] = {"node": node, "online": st is not None}
            if st is not None:
                row.update(
                    role=st["role"],
                    epoch=st["epoch"],
                    log_end=st["log_end"],
                    durable=st["durable"],
                    commit=st["commit"],
                    applied=st["applied"],
                )
            if node in followers:
                row["lag"] = followers[node]["lag"]
            elif node == qdef.leader and st is not None:
                row["lag"] = 0
            members.append(row)
        return {
            "vhost": qdef.vhost,
            "name": qdef.name,
            "leader": qdef.leader,
            "epoch": qdef.epoch,
            "electing": qdef.electing,
            "incarnation": qdef.incarnation,
            "members": members,
        }

    def status(self, vhost: str, name: str) -> dict[str, Any] | None:
        for key, member in self.links.members.items():
            if key[0] == vhost and key[1] == name:
                return member.status()
        return None

    # -- applied commands -------------------------------------------------------------------------

    def _on_applied(self, cmd: Any, result: Any) -> None:
        if isinstance(result, MetadataError):
            return
        broker = self.broker
        assert broker is not None
        if isinstance(cmd, cmds.QueueElection):
            member = self.links.member((cmd.vhost, cmd.name, cmd.incarnation))
            if member is not None:
                member.fence(cmd.epoch)
        elif isinstance(cmd, cmds.QueueLeader):
            if broker.recovered:
                self._new_leader(cmd)
        elif isinstance(cmd, cmds.SetQueueReplicas):
            if broker.recovered:
                self._replicas_changed(cmd)
        elif isinstance(cmd, cmds.DeleteQueue):
            self._close(cmd.vhost, cmd.name)
        elif isinstance(cmd, cmds.DeleteVhost):
            self._close(cmd.name, None)

    def _new_leader(self, cmd: cmds.QueueLeader) -> None:
        broker = self.broker
        assert broker is not None
        qdef = broker.state.queue(cmd.vhost, cmd.name)
        if qdef is None:
            return
        old = broker.queues.get(cmd.vhost, {}).get(cmd.name)
        member = self._member(qdef)
        if cmd.leader == self.node_id and member is not None:
            if not member.lead(cmd.epoch):
                return
            new = self._local(qdef, member)
        else:
            if member is not None:
                member.follow(cmd.epoch, cmd.leader)
            new = self._remote(qdef)
        log.info(
            "queue '%s' in vhost '%s': node %s leads epoch %d",
            cmd.name,
            cmd.vhost,
            cmd.leader,
            cmd.epoch,
        )
        if new is None:
            return
        broker._register(new)
        if old is None or old is new:
            return
        if isinstance(old, ReplicatedRemoteQueue):
            old.hand_over(new)  # its consumers, and publishes held while no leader answered
            return
        old.successor = new  # where settlements of its deliveries go from now on
        if member is not None and member.dropped_deletes:
            # Acks taken here that the old epoch never committed: they still count.
            dropped, member.dropped_deletes = member.dropped_deletes, []
            new.settle_earlier(dropped, Outcome.ACCEPTED)
        for c in old.detach_consumers():  # this node's LocalQueue, as the leader before
            if getattr(c, "on_other_node", False):
                # Another node's consumer: that node moves it (after a partition its stream
                # here may be dead while the consumer lives on there). It takes no more
                # deliveries here; its settlements still reach the old queue, which passes
                # them on (successor).
                c.subscribed = False
                continue
            c.queue = new
            new.subscribe(c)

    def _replicas_changed(self, cmd: cmds.SetQueueReplicas) -> None:
        broker = self.broker
        assert broker is not None
        qdef = broker.state.queue(cmd.vhost, cmd.name)
        if qdef is None:
            return
        key = (cmd.vhost, cmd.name, cmd.incarnation)
        member = self.links.member(key)
        if self.node_id not in qdef.replicas:
            if member is not None:
                log.info("queue '%s' in vhost '%s': replica here removed", cmd.name, cmd.vhost)
                member.close(drop=True)
            return
        if member is None:
            member = self._member(qdef)
            assert member is not None
            log.info("queue '%s' in vhost '%s': new replica here", cmd.name, cmd.vhost)
            member.follow(qdef.epoch, qdef.leader)
            return
        member.set_replicas(qdef.replicas)

    async def grow(self, node: str, which: str = "all") -> list[tuple[str, str]]:
        """Add `node` to the replicas of every quorum queue without it (`which` "even": only
        those with an even number of replicas, as rabbitmq-queues grow); returns them."""
        broker = self.broker
        assert broker is not None
        done = []
        for q in self._queues():
            if node in q.replicas or (which == "even" and len(q.replicas) % 2):
                continue
            await broker.propose(
                cmds.SetQueueReplicas(q.vhost, q.name, q.incarnation, (*q.replicas, node))
            )
            done.append((q.vhost, q.name))
        return done

    async def shrink(self, node: str, replace: bool = False) -> list[tuple[str, str, str]]:
        """Remove `node` from the replicas of every quorum queue it has one of (after moving
        the leadership away where it leads); with `replace`, first add the live member holding
        the fewest replicas, so each queue keeps its replica count (a node leaving). Returns
        (vhost, queue, what happened)."""
        broker = self.broker
        assert broker is not None
        out = []
        if any(q.leader == node for q in self._queues() if node in q.replicas):
            await self.transfer(node, 10.0)
        for q in self._queues():
            if node not in q.replicas:
                continue
            if q.leader == node:
                out.append(
                    (
                        q.vhost,
                        q.name,
                        "kept: it still leads the queue (no other replica "
                        "was as far when it was asked to hand over)",
                    )
                )
                continue
            if len(q.replicas) == 1:
                out.append((q.vhost, q.name, "kept: the queue's only replica"))
                continue
            if replace:
                spare = self._spare(q)
                if spare is not None:
                    await broker.propose(
                        cmds.SetQueueReplicas(q.vhost, q.name, q.incarnation, (*q.replicas, spare))
                    )
                    q = broker.state.queue(q.vhost, q.name)
            rest = tuple(r for r in q.replicas if r != node)
            await broker.propose(cmds.SetQueueReplicas(q.vhost, q.name, q.incarnation, rest))
            out.append((q.vhost, q.name, f"removed ({', '.join(rest)})"))
        return out

    def _spare(self, qdef: QueueDef) -> str | None:
        broker = self.broker
        assert broker is not None
        live = self.controller.live()
        held: dict[str, int] = {}
        for q in self._queues():
            for r in q.replicas:
                held[r] = held.get(r, 0) + 1
        spare = [m for m in broker.state.members if m in live and m not in qdef.replicas]
        return min(spare, key=lambda m: (held.get(m, 0), m)) if spare else None

    def _queues(self) -> list[QueueDef]:
        broker = self.broker
        assert broker is not None
        return [
            q for vh in broker.state.vhosts.values() for q in vh.queues.values() if q.replicated
        ]

    def _close(self, vhost: str, name: str | None) -> None:
        for key, member in list(self.links.members.items()):
            if key[0] == vhost and (name is None or key[1] == name):
                member.close(drop=True)

    def _propose(self, cmd: Any) -> None:
        broker = self.broker
        assert broker is not None

        async def run() -> None:
            for _ in range(60):
                try:
                    await broker.propose(cmd)
                    return
                except MetadataError:
                    return  # applied with a verdict (already electing, or gone)
                except Exception as e:  # noqa: BLE001 - no Raft leader yet
                    log.debug("%s not committed yet: %s", type(cmd).__name__, e)
                    await asyncio.sleep(1.0)

        task = asyncio.ensure_future(run())
        self._proposals.add(task)
        task.add_done_callback(self._proposals.discard)
