"""How a node takes part in the cluster: its Raft metadata log, placement, and forwarding.

`ClusterPlan.from_config` reads --peers / --cluster-port / --raft-port / --cluster-secret(-file).
Without --peers a node is a one-member cluster on loopback: the same Raft code path, no gRPC
listener. The node (node/server.py) calls `metadata()` for its log, `attach(node)` once its broker
exists (placement, forwarding), and `detach()` when it stops.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from .membership import Member, Membership, PeersError, is_loopback, parse_peers, place_queue

log = logging.getLogger("merpati.cluster")


class ClusterPlan:
    def __init__(self, membership: Membership, secret: str | None, bind_host: str) -> None:
        self.membership = membership
        self.secret = secret
        self.bind_host = bind_host
        self.metadata_log: Any = None
        self.forwarding: Any = None

    @classmethod
    def from_config(cls, cfg: Any) -> ClusterPlan:
        node_id = cfg.resolved_node_id()
        offset = cfg.resolved_raft_port() - cfg.cluster_port
        if cfg.peers:
            members = parse_peers(cfg.peers, offset)
        else:
            members = [Member(node_id, "127.0.0.1", cfg.cluster_port, cfg.resolved_raft_port())]
        membership = Membership(members, node_id)
        secret = cfg.cluster_secret or None
        if cfg.cluster_secret_file:
            try:
                secret = Path(cfg.cluster_secret_file).read_text().strip() or None
            except OSError as e:
                raise PeersError(f"cannot read cluster-secret-file {cfg.cluster_secret_file}: {e.strerror}")
        exposed = [m for m in membership.members.values() if not is_loopback(m.host)]
        if exposed and not secret:
            raise PeersError(
                "refusing to start: the cluster listens on non-loopback addresses "
                f"({', '.join(m.cluster_address for m in exposed)}) without a cluster secret; "
                "set --cluster-secret or --cluster-secret-file"
            )
        # Listen on the member's own host when it is an address here, else everywhere.
        me = membership.me.host
        bind_host = me if is_loopback(me) else "0.0.0.0"
        return cls(membership, secret, bind_host)

    @property
    def clustered(self) -> bool:
        return len(self.membership.members) > 1

    def metadata(self, data_dir: Path) -> Any:
        from .raft_log import RaftLog

        me = self.membership.me
        self.metadata_log = RaftLog(
            data_dir / "raft",
            me.raft_address,
            partners=[m.raft_address for m in self.membership.others],
            bind_address=f"{self.bind_host}:{me.raft_port}",
            password=self.secret,
        )
        self.membership.status = self.metadata_log.status
        return self.metadata_log

    async def attach(self, node: Any) -> None:
        broker = node.broker
        membership = self.membership
        broker.place_queue = lambda exclusive: place_queue(
            broker.state, membership.live(), broker.node_id, exclusive
        )
        broker.cluster = self
        if not self.clustered:
            return
        try:
            from .forwarding.wiring import start_forwarding
        except ImportError:  # pragma: no cover - forwarding lands with the gRPC layer
            log.warning("gRPC forwarding is not available: queues on other nodes are unreachable")
            return
        self.forwarding = await start_forwarding(
            broker,
            node_id=membership.me.node_id,
            bind_host=self.bind_host,
            cluster_port=membership.me.cluster_port,
            peers={m.node_id: m.cluster_address for m in membership.others},
            secret=self.secret,
        )

    async def wait_for_majority(self, start: Any) -> None:
        """Start the Raft log, saying in the log what it waits for while no majority answers."""
        task = asyncio.ensure_future(start(timeout=3600.0))
        others = ", ".join(m.node_id for m in self.membership.others)
        while True:
            done, _ = await asyncio.wait({task}, timeout=5.0)
            if done:
                task.result()
                return
            log.warning("waiting for a majority of the cluster (%s) to elect a Raft leader", others)

    async def detach(self) -> None:
        if self.forwarding is not None:
            await self.forwarding.stop()
            self.forwarding = None

    def status(self) -> dict[str, Any]:
        m = self.membership
        raft = self.metadata_log.status() if self.metadata_log is not None else {}
        return {
            "members": {n.node_id: n.cluster_address for n in m.members.values()},
            "running": sorted(m.live()),
            "raft_leader": m.leader_node(),
            "raft_term": raft.get("raft_term"),
            "commit_index": raft.get("commit_idx"),
        }
