"""`ClusterNode`: this node as a member of the cluster — its Raft metadata log, queue placement,
forwarding to the other nodes, and queue moves. It is the broker's `ClusterSeam`
(node/cluster_seam.py).

`ClusterNode.from_config` reads --peers / --cluster-port / --raft-port / --cluster-secret(-file).
Without --peers a node is a one-member cluster on loopback: the same Raft code path, no gRPC
listener. The node (node/server.py) calls `metadata()` for its log, passes the ClusterNode to its
Broker (which binds itself to it), calls `start_forwarding()` before the log starts, and
`detach()` when it stops.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from merpati.node.core.limits import ConnectionCounts
from merpati.node.metadata.commands import MoveQueue, NodeJoined, NodeLeft
from merpati.node.metadata.state import MetadataError

from .membership import (
    Member,
    MembersFile,
    Membership,
    PeersError,
    is_loopback,
    known_or_discovered,
    place_queue,
)
from .queue_moves import QueueMoves
from .replication.queues import ReplicatedQueues

JOIN_ANSWER_WITHIN = 4.0  # below join.ASK_TIMEOUT
# How long remove_node asks again while Raft refuses the change (a leader stepping down, a
# new leader's first entry not committed yet).
REMOVE_TIMEOUT = 30.0

log = logging.getLogger("merpati.cluster")

# How long a starting node waits for its gRPC links to the other members before it serves clients.
LINK_WAIT = 5.0


class ClusterNode:
    def __init__(
        self,
        membership: Membership,
        secret: str | None,
        bind_host: str,
        handover_window: int | None = None,
    ) -> None:
        self.membership = membership
        self.secret = secret
        self.bind_host = bind_host
        self.metadata_log: Any = None
        self.forwarding: Any = None
        self.broker: Any = None
        self.moves = QueueMoves() if handover_window is None else QueueMoves(handover_window)
        # Where the members are kept for the next start (DNS form of --peers only).
        self.members_file: MembersFile | None = None
        # Never started Raft here: ask the others to join before starting it (join.py).
        self.new_here = False
        self._join_task: asyncio.Future | None = None  # a node being added (join)
        self.tls: Any = None  # cluster_tls.ClusterTls with --cluster-tls-*, else None
        self.link_dir = ""  # --local-link-dir: forwarded streams to nodes of this host
        me = membership.me.node_id
        self.replicated = ReplicatedQueues(
            me, membership.live, lambda: membership.leader_node() == me
        )

    @classmethod
    def from_config(cls, cfg: Any) -> ClusterNode:
        node_id = cfg.resolved_node_id()
        offset = cfg.resolved_raft_port() - cfg.cluster_port
        members_file = None
        if cfg.peers:
            if cfg.peers.strip().startswith("dns:"):
                members_file = MembersFile(cfg.data_dir)
            known = members_file.load() if members_file is not None else []
            members = known_or_discovered(cfg.peers, offset, cfg.peers_expected, known, log=log)
        else:
            members = [Member(node_id, "127.0.0.1", cfg.cluster_port, cfg.resolved_raft_port())]
        membership = Membership(members, node_id)
        secret = cfg.cluster_secret or None
        if cfg.cluster_secret_file:
            try:
                secret = Path(cfg.cluster_secret_file).read_text().strip() or None
            except OSError as e:
                raise PeersError(
                    f"cannot read cluster-secret-file {cfg.cluster_secret_file}: {e.strerror}"
                )
        tls = None
        if cfg.cluster_tls_cert:
            from merpati.node.tls import TLSConfigError

            from .cluster_tls import ClusterTls

            try:
                tls = ClusterTls(cfg.cluster_tls_cert, cfg.cluster_tls_key, cfg.cluster_tls_ca)
            except TLSConfigError as e:
                raise PeersError(str(e)) from None
        exposed = [m for m in membership.members.values() if not is_loopback(m.host)]
        if exposed and not secret and tls is None:
            raise PeersError(
                "refusing to start: the cluster listens on non-loopback addresses "
                f"({', '.join(m.cluster_address for m in exposed)}) without a cluster secret "
                "or cluster TLS; set --cluster-secret(-file) or --cluster-tls-cert/-key/-ca"
            )
        # Listen on the member's own host when it is an address here, else everywhere.
        me = membership.me.host
        bind_host = me if is_loopback(me) else "0.0.0.0"
        node = cls(membership, secret, bind_host, cfg.handover_window)
        node.members_file = members_file
        node.tls = tls
        node.link_dir = cfg.local_link_dir
        raft_dir = Path(cfg.data_dir) / "raft"
        node.new_here = not (raft_dir.is_dir() and any(raft_dir.iterdir()))
        return node

    @property
    def clustered(self) -> bool:
        return len(self.membership.members) > 1

    async def join_if_new(self) -> None:
        """A node that never ran Raft here: ask the peers it was given (or found in DNS) to add
        it, and take the cluster's members from the answer (none answering as a running
        cluster: it is forming, and this node forms it with them)."""
        if not self.new_here or not self.membership.others:
            return
        from .join import ask_to_join

        members = await ask_to_join(self.membership.me, self.membership.others, self.secret)
        if members is not None:
            self.membership.replace(members)

    async def join(self, node_id: str, cluster_address: str) -> tuple[str, list[Member]]:
        """Another node asks to join (cluster/join.py): add it as `add_node` does."""
        from .join import Busy, Conflict, NotFormed

        me = self.membership.me.node_id
        broker = self.broker
        if broker is None or not broker.recovered or self.metadata_log is None:
            raise NotFormed(f"node {me} is not part of a running cluster yet")
        known = self.membership.members.get(node_id)
        if known is not None:
            if known.cluster_address != cluster_address:
                raise Conflict(
                    f"node id '{node_id}' is a member at {known.cluster_address}, "
                    f"not {cluster_address}"
                )
            return "member", list(self.membership.members.values())
        task = self._join_task
        if task is not None and not task.done():
            raise Busy(f"node {me} is adding another node; ask again")
        task = self._join_task = asyncio.ensure_future(
            asyncio.wait_for(self.add_node(broker, node_id, cluster_address), 30.0)
        )
        # Answer within the caller's deadline: a change that takes longer goes on, and the
        # caller, asking again, finds itself a member.
        done, _ = await asyncio.wait({task}, timeout=JOIN_ANSWER_WITHIN)
        if not done:
            raise Busy(f"adding {node_id} takes a while; ask again")
        if task.exception() is not None:  # pysyncobj refuses a second change at once
            e = task.exception()
            raise Busy(f"adding {node_id} did not complete: {e or type(e).__name__}")
        log.info("node %s (%s) joined the cluster", node_id, cluster_address)
        return "joined", list(self.membership.members.values())

    def metadata(self, data_dir: Path) -> Any:
        from .raft_log import RaftLog

        me = self.membership.me
        self._save_members()
        self.metadata_log = RaftLog(
            data_dir / "raft",
            me.raft_address,
            partners=[m.raft_address for m in self.membership.others],
            bind_address=f"{self.bind_host}:{me.raft_port}",
            password=self.secret,
            tls=self.tls.raft if self.tls is not None else None,
            dynamic_membership=self.clustered,
        )
        if self.tls is not None:
            self.tls.watcher.start()
        self.membership.status = self.metadata_log.status
        return self.metadata_log

    # -- the broker's seam (node/cluster_seam.py) -------------------------------------------------

    def bind(self, broker: Any) -> None:
        self.broker = broker
        self.moves.bind(broker)
        self.replicated.bind(broker)
        broker.metadata.subscribe(self._on_applied)

    def place_queue(self, exclusive: bool, locator: str = "balanced") -> str:
        broker = self.broker
        return place_queue(broker.state, self.membership.live(), broker.node_id, exclusive, locator)

    def place_replicas(self, leader: str, count: int) -> tuple[str, ...]:
        m = self.membership
        return self.replicated.place(
            self.broker.state, sorted(m.members), m.live(), leader, min(count, len(m.members))
        )

    def replicated_queue(self, qdef: Any) -> Any:
        return self.replicated.handle(qdef)

    def replica_status(self, vhost: str, name: str) -> dict[str, Any] | None:
        return self.replicated.status(vhost, name)

    async def step_down(self, timeout: float) -> None:
        if not self.clustered or self.broker is None:
            return
        try:
            kept = await self.replicated.transfer(self.membership.me.node_id, timeout)
        except Exception as e:  # noqa: BLE001 - no Raft majority: the controller fails over
            log.warning("could not hand the leadership of quorum queues over: %s", e)
            return
        if kept:
            log.warning(
                "stopping while still leading %d quorum queue(s); they fail over", len(kept)
            )

    def remote_queue(self, qdef: Any) -> Any:
        return self.forwarding.remote_queue(qdef) if self.forwarding is not None else None

    def queue_purged(self, q: Any) -> None:
        self.moves.queue_purged(q)

    def recover(self, stored: Any, keep: set[tuple[str, str]]) -> int:
        return self.moves.recover(stored, keep)

    def recovered(self) -> None:
        self.moves.recovered()
        self.replicated.start()

    async def wait_handovers(self, timeout: float) -> bool:
        if self.moves.handovers:
            log.info("waiting for %d queue handover(s)", len(self.moves.handovers))
        return await self.moves.wait(timeout)

    def peer_counts(self) -> ConnectionCounts:
        if self.forwarding is None:
            return ConnectionCounts()
        return self.forwarding.peer_counts()

    async def peer_client_views(self, kind: str) -> list[dict[str, Any]]:
        if self.forwarding is None:
            return []
        return await self.forwarding.peer_client_views(kind)

    async def close_peer_connection(self, node: str, name: str, reason: str) -> bool:
        if self.forwarding is None:
            return False
        return await self.forwarding.close_peer_connection(node, name, reason)

    def _on_applied(self, cmd: Any, result: Any) -> None:
        if isinstance(cmd, (NodeJoined, NodeLeft)) and not isinstance(result, MetadataError):
            self.membership_changed(cmd, result)

    # -- forwarding -------------------------------------------------------------------------------

    async def start_forwarding(self, batch_messages: int | None = None) -> None:
        """Serve this node's queues to the other members and connect to them (a cluster of one
        forwards nothing); `batch_messages` overrides the messages per forwarded batch."""
        if not self.clustered:
            return
        from .forwarding.wiring import start_forwarding

        me = self.membership.me
        self.forwarding = await start_forwarding(
            self.broker,
            node_id=me.node_id,
            bind_host=self.bind_host,
            cluster_port=me.cluster_port,
            peers={m.node_id: m.cluster_address for m in self.membership.others},
            secret=self.secret,
            moves=self.moves,
            batch_messages=batch_messages,
            servicers=[self.replicated.servicer, self._join_servicer],
            link_dir=self.link_dir,
        )
        self.replicated.forwarding = self.forwarding
        self.moves.forwarding = self.forwarding
        self.membership.peer_state = self.forwarding.peer_state

    def _join_servicer(self, caller: Any) -> Any:
        from .join import JoinServicer

        return JoinServicer(self.join, caller, self.step_down_raft)

    async def step_down_raft(self) -> bool:
        """Membership.StepDown: hand the metadata Raft leadership to a follower (this node is
        about to be removed); whether it was handed over."""
        if self.metadata_log is None or not hasattr(self.metadata_log, "hand_over"):
            return False
        return await self.metadata_log.hand_over()

    async def wait_for_majority(self, start: Any) -> None:
        """Start the Raft log, saying in the log what it waits for while no majority answers;
        then give the links to the other nodes a moment to come up, so the first messages this
        node forwards do not find a peer that merely has not been pinged yet."""
        task = asyncio.ensure_future(start(timeout=3600.0))
        others = ", ".join(m.node_id for m in self.membership.others)
        while True:
            done, _ = await asyncio.wait({task}, timeout=5.0)
            if done:
                task.result()
                break
            log.warning("waiting for a majority of the cluster (%s) to elect a Raft leader", others)
        if self.forwarding is None:
            return
        deadline = asyncio.get_running_loop().time() + LINK_WAIT
        while asyncio.get_running_loop().time() < deadline:
            if all(self.forwarding.peer_state(m.node_id) == "up" for m in self.membership.others):
                return
            await asyncio.sleep(0.05)
        down = [
            m.node_id
            for m in self.membership.others
            if self.forwarding.peer_state(m.node_id) != "up"
        ]
        log.warning(
            "starting without links to %s (their queues are unavailable until they answer)",
            ", ".join(down),
        )

    async def announce(self, broker: Any) -> None:
        """Record this node (and the configured peers) in the replicated membership."""
        me = self.membership.me
        if broker.state.members.get(me.node_id) != (me.cluster_address, me.raft_address):
            await broker.propose(NodeJoined(me.node_id, me.cluster_address, me.raft_address))

    async def add_node(self, broker: Any, node_id: str, cluster_address: str) -> None:
        """`merpati ctl add_node`: a new member joins Raft, then the metadata names it."""
        host, _, port = cluster_address.rpartition(":")
        offset = self.membership.me.raft_port - self.membership.me.cluster_port
        member = Member(node_id, host, int(port), int(port) + offset)
        known = self.membership.members.get(node_id)
        if known is not None and known.cluster_address == member.cluster_address:
            return  # a member already (it may have joined by itself)
        await self.metadata_log.change_membership("add", member.raft_address)
        await broker.propose(NodeJoined(node_id, member.cluster_address, member.raft_address))

    async def remove_node(self, broker: Any, node_id: str) -> None:
        member = self.membership.members.get(node_id)
        if member is None:
            raise PeersError(f"no node '{node_id}' in the cluster")
        # Its quorum queue replicas are re-created on other nodes first: the queues keep their
        # replica count (and a majority) after it goes.
        for vhost, name, what in await self.replicated.shrink(node_id, replace=True):
            log.info("queue '%s' in vhost '%s' on removing %s: %s", name, vhost, node_id, what)
        await self._remove_from_raft(member)
        await broker.propose(NodeLeft(node_id))

    async def _remove_from_raft(self, member: Member) -> None:
        # pysyncobj denies (REQUEST_DENIED) removing the leader itself, a change while the last
        # one is uncommitted, and any change before a new leader's first entry commits: ask a
        # leading node to step down, and ask again while the refusal can pass.
        from .join import ask_to_step_down
        from .raft_log import FAIL_REASON, RaftProposalError

        loop = asyncio.get_running_loop()
        deadline = loop.time() + REMOVE_TIMEOUT
        while True:
            try:
                await self.metadata_log.change_membership("remove", member.raft_address)
                return
            except RaftProposalError as e:
                if e.reason != FAIL_REASON.REQUEST_DENIED or loop.time() > deadline:
                    raise
            if self.membership.leader_node() == member.node_id:
                await ask_to_step_down(self.membership.me, member, self.secret)
            await asyncio.sleep(0.5)

    def membership_changed(self, cmd: Any, result: Any) -> None:
        """A NodeJoined/NodeLeft was applied (on every node): update peers and forwarding."""
        m = self.membership
        if isinstance(cmd, NodeJoined):
            host, _, port = cmd.cluster_address.rpartition(":")
            raft_port = int(cmd.raft_address.rpartition(":")[2])
            if cmd.node_id != m.me.node_id:
                m.members[cmd.node_id] = Member(cmd.node_id, host, int(port), raft_port)
                if self.forwarding is not None and result == "joined":
                    self.forwarding.add_peer(cmd.node_id, cmd.cluster_address)
        elif isinstance(cmd, NodeLeft) and cmd.node_id != m.me.node_id:
            m.members.pop(cmd.node_id, None)
            if self.forwarding is not None:
                self.forwarding.remove_peer(cmd.node_id)
        self._save_members()

    def _save_members(self) -> None:
        if self.members_file is None:
            return
        try:
            self.members_file.save(list(self.membership.members.values()))
        except OSError as e:
            log.warning("cannot keep the cluster's members in %s: %s", self.members_file.path, e)

    async def rebalance(self, broker: Any) -> list[tuple[str, str, str, str]]:
        """Move leaders of idle queues (no messages, no consumers) from the busiest live nodes to
        the least busy until the spread is even; returns the moves (vhost, queue, from, to)."""
        live = sorted(self.membership.live())
        queues = [(vh.name, q) for vh in broker.state.vhosts.values() for q in vh.queues.values()]
        counts = {n: 0 for n in live}
        for _, q in queues:
            if q.leader in counts:
                counts[q.leader] += 1
        total = sum(counts.values())
        if len(live) < 2 or not total:
            return []
        target = -(-total // len(live))  # ceiling
        moves = []
        for vhost, q in sorted(queues, key=lambda e: (e[0], e[1].name)):
            src = q.leader
            if src not in counts or counts[src] <= target or q.exclusive_owner is not None:
                continue
            open_nodes = [n for n in live if n not in broker.state.draining]
            if not open_nodes:
                continue
            dst = min(open_nodes, key=lambda n: (counts[n], n))
            if counts[src] - counts[dst] < 2:
                continue  # moving would not even the spread
            handle = broker.queue(vhost, q.name)
            if handle is None:
                continue
            try:
                stats = await handle.stats()
            except Exception:
                continue
            if stats != (0, 0):
                continue  # only idle queues move: nothing in flight is put at risk
            await broker.propose(MoveQueue(vhost, q.name, src, dst))
            counts[src] -= 1
            counts[dst] += 1
            moves.append((vhost, q.name, src, dst))
        return moves

    async def drain(self, broker: Any, node_id: str, timeout: float) -> dict[str, Any]:
        """`merpati ctl drain-node`: see cluster/drain.py."""
        from .drain import drain_node

        return await drain_node(broker, self, node_id, timeout)

    async def undrain(self, broker: Any, node_id: str) -> dict[str, Any]:
        from .drain import undrain_node

        return await undrain_node(broker, self, node_id)

    def reload_tls(self, why: str) -> None:
        """Load the cluster certificate again (SIGHUP): new connections to and from the other
        nodes, gRPC and Raft, show and check the new one."""
        if self.tls is not None:
            self.tls.watcher.reload(why)

    async def detach(self) -> None:
        if self.tls is not None:
            self.tls.watcher.stop()
        await self.replicated.stop()
        if self.forwarding is not None:
            await self.forwarding.stop()
            self.forwarding = None
            self.moves.forwarding = None

    def status(self) -> dict[str, Any]:
        m = self.membership
        raft = self.metadata_log.status() if self.metadata_log is not None else {}
        leaders: dict[str, int] = dict.fromkeys(m.members, 0)
        state = self.metadata_log.state if self.metadata_log is not None else None
        for vh in state.vhosts.values() if state is not None else ():
            for q in vh.queues.values():
                leaders[q.leader] = leaders.get(q.leader, 0) + 1
        return {
            "queue_leaders": leaders,
            "members": {n.node_id: n.cluster_address for n in m.members.values()},
            "running": sorted(m.live()),
            "draining": sorted(state.draining) if state is not None else [],
            "raft_leader": m.leader_node(),
            "raft_term": raft.get("raft_term"),
            "commit_index": raft.get("commit_idx"),
        }
