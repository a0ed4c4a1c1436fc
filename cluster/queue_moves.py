"""Queue moves on this node: when a queue's leadership moves (rebalance, drain), the old leader
hands over what it held and tells the cluster once it is done.

Theory of operation. Every node applies the same MoveQueue. On each, the broker's handle of the
queue is replaced by one for the new leader (`Broker.install_queue`); on the old leader, the old
`LocalQueue` gives up its messages to a `Handover` (cluster/handover.py), which forwards them to
the new leader and deletes them here as they are confirmed. When the last handover of a queue is
done, this node proposes QueueHandedOver: the metadata then no longer lists it in the queue's
`handing_over`, which is what a drain waits for.

A crash can cut a handover short: the rows it had not sent yet stay in the store, and `recover`
hands them over after the restart, as long as the metadata still says this node hands the queue
over (else they belong to a queue deleted meanwhile and are dropped).

A purge on the new leader reaches the nodes still handing the queue over (`queue_purged`), so
what they have not forwarded yet is dropped too.
"""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from merpati.node.core.queue import LocalQueue, QueueHandle
from merpati.node.metadata import commands as cmds
from merpati.node.metadata.state import MetadataError
from merpati.node.store.sqlite import handover_name

from .handover import WINDOW, Handover

if TYPE_CHECKING:
    from merpati.node.broker import Broker

log = logging.getLogger("merpati.cluster")


class QueueMoves:
    """The handovers of the queues this node led and led no longer."""

    def __init__(self, window: int = WINDOW) -> None:
        self.window = window
        self.handovers: set[Handover] = set()
        self.broker: Broker | None = None
        # The links to the other nodes (cluster.forwarding's Forwarding), once they run: a purge
        # reaches the nodes still handing a queue over through them.
        self.forwarding: Any = None
        self._proposals: set[asyncio.Task] = set()

    def bind(self, broker: Broker) -> None:
        self.broker = broker
        broker.metadata.subscribe(self._on_applied)

    def _on_applied(self, cmd: cmds.Command, result: Any) -> None:
        if isinstance(result, MetadataError):
            return
        if isinstance(cmd, cmds.MoveQueue) and result == "moved":
            self._moved(cmd)
        elif isinstance(cmd, cmds.DeleteQueue):
            self._abort(cmd.vhost, cmd.name)
        elif isinstance(cmd, cmds.DeleteVhost):
            self._abort(cmd.name, None)

    def _moved(self, cmd: cmds.MoveQueue) -> None:
        """The new leader's handle replaces the old one here, and the old leader hands over
        everything it holds of the queue."""
        broker = self.broker
        assert broker is not None
        old = broker.queues.setdefault(cmd.vhost, {}).pop(cmd.name, None)
        qdef = broker.state.queue(cmd.vhost, cmd.name)
        if qdef is None:
            return
        broker.install_queue(qdef)
        if isinstance(old, LocalQueue):
            self._hand_over(old, f"moved to node '{cmd.to_node}'")
        elif old is not None:
            old.delete(f"queue moved to node '{cmd.to_node}'")  # cancels its consumers here
        if cmd.from_node == broker.node_id and not isinstance(old, LocalQueue) and broker.recovered:
            self._check_handed_over(cmd.vhost, cmd.name)  # nothing of it here

    # -- handovers ------------------------------------------------------------------------------

    def _handover(self, vhost: str, name: str, store: Any, qid: int) -> Handover:
        broker = self.broker
        assert broker is not None

        def resolve() -> QueueHandle | None:
            return broker.queue(vhost, name) if broker.state.queue(vhost, name) else None

        h = Handover(vhost, name, store, qid, resolve, self._done, self.window)
        self.handovers.add(h)
        return h

    def _hand_over(self, q: LocalQueue, reason: str) -> None:
        h = self._handover(q.vhost, q.name, q.store, q.qid)
        # A queue's consumer that stands for one on another node (a forwarding stream) is left
        # to that node, which cancels it itself; its stream's end releases its deliveries here.
        from .forwarding.server import RemoteConsumer

        h.take_queue(q, lambda consumer: isinstance(consumer, RemoteConsumer), reason)

    def purge_handover(self, vhost: str, name: str) -> int | None:
        """Purge what a handover of this queue still holds here (None: no handover of it)."""
        for h in list(self.handovers):
            if h.vhost == vhost and h.name == name and not h.done:
                return h.purge()
        return None

    def queue_purged(self, q: QueueHandle) -> None:
        """A queue this node leads was purged: nodes still handing it over purge their part."""
        broker = self.broker
        assert broker is not None
        qdef = broker.state.queue(q.vhost, q.name)
        for node in qdef.handing_over if qdef is not None else ():
            if node == broker.node_id:
                self.purge_handover(q.vhost, q.name)  # moved away and back while handing over
                continue
            fw = self.forwarding
            peer = fw.peer(node) if fw is not None else None
            if peer is not None:
                peer.purge_handover(q.vhost, q.name)

    def _abort(self, vhost: str, name: str | None) -> None:
        for h in list(self.handovers):
            if h.vhost == vhost and (name is None or h.name == name):
                h.abort("the queue was deleted")

    def _done(self, h: Handover) -> None:
        self.handovers.discard(h)
        if not h.aborted:
            log.info("queue '%s' in vhost '%s' handed over (%d messages)", h.name, h.vhost, h.moved)
            self._check_handed_over(h.vhost, h.name)

    def _check_handed_over(self, vhost: str, name: str) -> None:
        """Tell the cluster this node holds nothing more of a queue it led (QueueHandedOver),
        once its last handover of it is done."""
        broker = self.broker
        assert broker is not None
        qdef = broker.state.queue(vhost, name)
        if qdef is None or broker.node_id not in qdef.handing_over:
            return
        if any(h.vhost == vhost and h.name == name for h in self.handovers):
            return
        cmd = cmds.QueueHandedOver(vhost, name, broker.node_id, qdef.moves)
        task = asyncio.ensure_future(self._propose_patiently(cmd))
        self._proposals.add(task)
        task.add_done_callback(self._proposals.discard)

        def stale(task: asyncio.Future) -> None:
            # Refused because the queue moved meanwhile: say it again if still true (a move
            # away from this node started a new handover, which says it when done).
            current = broker.state.queue(vhost, name)
            if not task.cancelled() and task.result() == "refused" and current is not None:
                if current.moves != cmd.moves:
                    self._check_handed_over(vhost, name)

        task.add_done_callback(stale)

    async def _propose_patiently(self, cmd: cmds.Command, attempts: int = 30) -> str:
        """Propose, trying again while the metadata log cannot take it (no Raft leader).
        Returns "applied", "refused" (applied with a MetadataError) or "failed"."""
        assert self.broker is not None
        for _ in range(attempts):
            try:
                await self.broker.propose(cmd)
                return "applied"
            except MetadataError:
                return "refused"  # applied with a verdict (e.g. the queue is gone): no retry
            except Exception as e:  # noqa: BLE001 - Raft unavailable or stopping
                log.debug("%s not committed yet: %s", type(cmd).__name__, e)
                await asyncio.sleep(1.0)
        return "failed"

    async def wait(self, timeout: float) -> bool:
        """Wait (up to `timeout` s) until every handover is done; True when none is left."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.handovers and loop.time() < deadline:
            await asyncio.sleep(0.05)
        if self._proposals:
            await asyncio.wait(set(self._proposals), timeout=max(0.1, deadline - loop.time()))
        return not self.handovers

    # -- after a restart ------------------------------------------------------------------------

    def recover(
        self, stored: dict[tuple[str, str], tuple[int, bool, int]], keep: set[tuple[str, str]]
    ) -> int:
        """Stored rows of queues this node no longer leads (a crash cut a handover short, or the
        move was applied while the node was down) go to the queue's leader now. Adds the rows it
        keeps to `keep`; returns how many messages it hands over."""
        broker = self.broker
        assert broker is not None
        store = broker.store
        total = 0
        for (vhost, stored_name), (qid, durable, _delivered) in stored.items():
            name, detached = handover_name(stored_name)
            qdef = broker.state.queue(vhost, name)
            if qdef is None or not durable or store is None:
                continue  # the queue is gone (forget_queues_except drops its rows)
            if not detached and qdef.leader == broker.node_id:
                continue  # recovered as this node's queue
            if broker.node_id not in qdef.handing_over:
                # Not a queue this node still hands over (only a MoveQueue from this node puts
                # it there): the rows belong to a queue deleted while the node was down, or cut
                # short (crash) after being confirmed all; a queue of that name now is another
                # one. forget_queues_except drops them.
                continue
            count = store.load_head(qid, 0)[1]
            keep.add((vhost, stored_name))
            if not count:
                store.drop_queue(qid)
                continue
            log.info(
                "handing %d stored messages of queue '%s' in vhost '%s' to node %s",
                count,
                name,
                vhost,
                qdef.leader,
            )
            h = self._handover(vhost, name, store, qid)
            # What expires before it leaves is dead-lettered as the queue would (its options
            # as of now: the queue of this node that had them is gone).
            like = SimpleNamespace(
                vhost=vhost, name=name, options=broker.queue_options(vhost, name, qdef.arguments)
            )
            h.dead_letter = lambda msg, reason, like=like: broker.dead_letter(like, msg, reason)
            h.take_stored(count)
            total += count
        return total

    def recovered(self) -> None:
        """The node has recovered: say which queues it has handed over entirely already."""
        broker = self.broker
        assert broker is not None
        for vhost, vh in broker.state.vhosts.items():
            for name, qdef in vh.queues.items():
                if broker.node_id in qdef.handing_over:
                    self._check_handed_over(vhost, name)
