"""Wiring forwarding into a node: the server on the cluster port, a client per peer, and the
RemoteQueues through which the node reaches queues other nodes lead (`remote_queue`).

    handle = await start_forwarding(broker, node_id="n1", bind_host="0.0.0.0",
                                    cluster_port=25672, peers={"n2": "10.0.0.2:25672"},
                                    secret="...", moves=queue_moves)
    handle.add_peer("n3", "10.0.0.3:25672")   # membership changed
    handle.remove_peer("n2")
    await handle.stop()

cluster.cluster_node.ClusterNode calls it after the broker exists and before `broker.recover(...)`
(which makes the handles of queues led by other nodes through it), on the loop the node runs on.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc

from merpati.node.core.limits import ConnectionCounts

from .client import DOWN, UP, Peer
from .local_link import socket_path, usable_path
from .remote_queue import RemoteQueue
from .server import ForwardingServer

log = logging.getLogger("merpati.forwarding")


class Forwarding:
    """The running forwarding layer of one node (what `start_forwarding` returns)."""

    def __init__(
        self,
        broker: Any,
        node_id: str,
        secret: str | bytes | None,
        batch_messages: int | None = None,
        moves: Any = None,
        link_dir: str = "",
    ) -> None:
        self.broker = broker
        self.link_dir = link_dir  # local_link's sockets of the nodes of this host ("" = none)
        self.node_id = node_id
        self.secret = secret
        self.server = ForwardingServer(broker, node_id, secret, moves)
        self.peers: dict[str, Peer] = {}
        self.port = 0
        self._batch_messages = batch_messages
        self._closing: set[asyncio.Task] = set()

    # -- peers ----------------------------------------------------------------------------------

    def peer(self, node_id: str) -> Peer | None:
        return self.peers.get(node_id)

    def add_peer(self, node_id: str, address: str) -> None:
        """Start talking to `node_id` at host:port (replaces an earlier address)."""
        if node_id == self.node_id:
            return
        old = self.peers.get(node_id)
        if old is not None:
            if old.address == address:
                return
            self.remove_peer(node_id)
        kwargs = {} if self._batch_messages is None else {"batch_messages": self._batch_messages}
        self.peers[node_id] = Peer(
            node_id,
            address,
            local_node=self.node_id,
            secret=self.secret,
            ledger=self.broker.store.ledger,
            on_alarms=self.broker.set_remote_alarms,
            link_path=self._link_path(node_id),
            **kwargs,
        )
        # Handles made before this peer was known find it now.
        for vq in self.broker.queues.values():
            for q in vq.values():
                if isinstance(q, RemoteQueue) and q.leader == node_id:
                    q._attach()

    def _link_path(self, node_id: str) -> str:
        if not self.link_dir:
            return ""
        path = socket_path(self.link_dir, node_id)
        if not usable_path(path):
            log.warning("local link %s: path too long for a Unix socket; using gRPC", path)
            return ""
        return path

    def remove_peer(self, node_id: str) -> None:
        """Stop talking to `node_id`: its queues here behave as if it were down."""
        peer = self.peers.pop(node_id, None)
        if peer is not None:
            # A node removed from the cluster blocks no one. Dropped here, not by the closing
            # peer later: a Peer for a new address of the same node may have reported by then.
            peer.on_alarms = None
            self.broker.set_remote_alarms(node_id, ())
            task = asyncio.ensure_future(peer.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    def peer_state(self, node_id: str) -> str:
        """'up', 'down', 'unknown' (not pinged yet) or 'absent' (not a peer)."""
        peer = self.peers.get(node_id)
        return peer.state if peer is not None else "absent"

    def peer_counts(self) -> ConnectionCounts:
        """The client connections and channels of the peers that are up, as last reported."""
        total = ConnectionCounts()
        for peer in self.peers.values():
            if peer.state == UP:
                total.add(peer.counts)
        return total

    async def peer_client_views(self, kind: str) -> list[dict[str, Any]]:
        """The clients of every peer not known to be down, asked at once; a peer that fails or
        does not answer within VIEWS_TIMEOUT is left out (a listing must not hang on it)."""
        peers = [p for p in self.peers.values() if p.state != DOWN and not p.closed]
        answers = await asyncio.gather(
            *(p.client_views(kind) for p in peers), return_exceptions=True
        )
        out: list[dict[str, Any]] = []
        for peer, answer in zip(peers, answers, strict=True):
            if isinstance(answer, BaseException):
                log.debug("no %s from node %s: %s", kind, peer.node_id, answer)
                continue
            out += answer
        return out

    async def close_peer_connection(self, node_id: str, name: str, reason: str) -> bool:
        peer = self.peers.get(node_id)
        if peer is None or peer.closed or peer.state == DOWN:
            return False
        try:
            return await peer.close_connection(name, reason)
        except grpc.RpcError as e:
            log.warning("closing connection %r on node %s: %s", name, node_id, e)
            return False

    # -- the broker's handles of queues led elsewhere ------------------------------------------

    def remote_queue(self, qdef: Any) -> RemoteQueue:
        return RemoteQueue(qdef.vhost, qdef.name, qdef.leader, self)

    # -- lifecycle ------------------------------------------------------------------------------

    async def stop(self) -> None:
        peers, self.peers = list(self.peers.values()), {}
        await asyncio.gather(*(p.close() for p in peers), return_exceptions=True)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
        await self.server.stop()


async def start_forwarding(
    broker: Any,
    *,
    node_id: str,
    bind_host: str,
    cluster_port: int,
    peers: dict[str, str],
    secret: str | bytes | None = None,
    batch_messages: int | None = None,
    moves: Any = None,
    servicers: list[Any] = (),  # type: ignore[assignment]
    link_dir: str = "",
) -> Forwarding:
    """Serve this node's queues to the others on `cluster_port` (0: a free port, see `.port`)
    and connect to `peers` ({node id: "host:port"}; this node's own entry is skipped). `moves`
    (cluster.queue_moves.QueueMoves) answers the other nodes' purges of queues it hands over.
    With `link_dir`, nodes of this host exchange the streams through Unix sockets there."""
    fw = Forwarding(broker, node_id, secret, batch_messages, moves, link_dir)
    # Other services on the same port and authentication: make(caller) -> a servicer.
    fw.server.extra = [make(fw.server._caller) for make in servicers]
    own = fw._link_path(node_id)
    fw.port = await fw.server.start(bind_host, cluster_port, own)
    for peer_id, address in peers.items():
        fw.add_peer(peer_id, address)
    log.info("forwarding on %s:%d to %d peers", bind_host, fw.port, len(fw.peers))
    return fw
