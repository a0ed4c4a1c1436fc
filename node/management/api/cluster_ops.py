"""Merpati's cluster operations under /api/merpati/cluster (no RabbitMQ equivalent over HTTP):
add and remove nodes, rebalance queue leaders, drain and undrain a node."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ...metadata.commands import MoveQueue
from ..app import bad_request, json_response, not_found, read_json
from .base import ApiBase


class ClusterOpsApi(ApiBase):
    def _plan(self) -> Any:
        plan = getattr(self.node, "cluster", None)
        if plan is None:
            raise bad_request("this node is not part of a cluster")
        return plan

    async def cluster_add_node(self, request: web.Request) -> web.Response:
        """{"node": "n4", "address": "host:cluster-port"}: the node joins Raft and the metadata."""
        self._admin(request)
        body = await read_json(request)
        node_id, address = body.get("node"), body.get("address")
        if not isinstance(node_id, str) or not isinstance(address, str) or ":" not in address:
            raise bad_request('expected {"node": ID, "address": "host:cluster-port"}')
        try:
            await self._plan().add_node(self.broker, node_id, address)
        except ValueError as e:
            raise bad_request(str(e))
        return json_response({"node": node_id, "address": address}, status=201)

    async def quorum_status(self, request: web.Request) -> web.Response:
        """A quorum queue's replicas, as each reports itself (`merpati ctl quorum_status`)."""
        vhost, name = self._vhost(request), request.match_info["name"]
        qdef = self.broker.state.queue(vhost, name)
        if qdef is None:
            raise not_found(f"no queue '{name}' in vhost '{vhost}'")
        if not qdef.replicated:
            raise bad_request(f"queue '{name}' in vhost '{vhost}' is not a quorum queue")
        return json_response(await self._plan().replicated.quorum_status(qdef))

    async def quorum_grow(self, request: web.Request) -> web.Response:
        """{"node": N, "which": "all" | "even"}: N gets a replica of every quorum queue."""
        self._admin(request)
        body = await read_json(request)
        node, which = body.get("node"), body.get("which", "all")
        if node not in self.broker.state.members:
            raise bad_request(f"no node '{node}' in the cluster")
        if which not in ("all", "even"):
            raise bad_request(f"which must be all or even, not {which!r}")
        grown = await self._plan().replicated.grow(node, which)
        return json_response({"node": node, "grown": [{"vhost": v, "queue": q} for v, q in grown]})

    async def quorum_shrink(self, request: web.Request) -> web.Response:
        """{"node": N}: N gives up its replica of every quorum queue (leadership moved first)."""
        self._admin(request)
        body = await read_json(request)
        node = body.get("node")
        if node not in self.broker.state.members:
            raise bad_request(f"no node '{node}' in the cluster")
        rows = await self._plan().replicated.shrink(node)
        return json_response(
            {"node": node, "queues": [{"vhost": v, "queue": q, "result": r} for v, q, r in rows]}
        )

    async def cluster_remove_node(self, request: web.Request) -> web.Response:
        self._admin(request)
        try:
            await self._plan().remove_node(self.broker, request.match_info["node"])
        except ValueError as e:
            raise not_found(str(e))
        return web.Response(status=204)

    async def cluster_rebalance(self, request: web.Request) -> web.Response:
        """Move leaders of idle queues to even the spread over the live nodes."""
        self._admin(request)
        moves = await self._plan().rebalance(self.broker)
        return json_response(
            {"moves": [{"vhost": v, "queue": q, "from": a, "to": b} for v, q, a, b in moves]}
        )

    async def queue_move(self, request: web.Request) -> web.Response:
        """{"node": N}: a classic queue's leadership (and its messages) moves to node N, as
        rebalance and drain move queues (cluster/handover.py); a quorum queue's leader is chosen
        by election among its replicas instead, and an exclusive queue stays with its
        connection."""
        self._admin(request)
        vhost, name = self._vhost(request, write=True), request.match_info["name"]
        qdef = self.broker.state.queue(vhost, name)
        if qdef is None:
            raise not_found(f"no queue '{name}' in vhost '{vhost}'")
        body = await read_json(request)
        to = body.get("node")
        plan = self._plan()
        if not isinstance(to, str) or to not in self.broker.state.members:
            raise bad_request(f"no node '{to}' in the cluster")
        if qdef.replicated:
            raise bad_request(
                f"queue '{name}' is a quorum queue: its leader moves by election among its "
                "replicas (grow or shrink them, or drain its node)"
            )
        if qdef.exclusive_owner is not None:
            raise bad_request(f"queue '{name}' is exclusive: it stays with its connection")
        if to == qdef.leader:
            raise bad_request(f"queue '{name}' is already led by {to}")
        if to not in plan.membership.live():
            raise bad_request(f"node {to} is not running")
        if to in self.broker.state.draining:
            raise bad_request(f"node {to} is being drained: it takes no queues")
        await self._propose(MoveQueue(vhost, name, qdef.leader, to))
        return json_response({"vhost": vhost, "queue": name, "from": qdef.leader, "to": to})

    async def cluster_drain(self, request: web.Request) -> web.Response:
        """{"timeout": seconds}: no new queues on the node, its queues (and their messages) moved
        to the other nodes; answers when that is done or the timeout passed, with what moved
        and what did not (cluster/drain.py)."""
        self._admin(request)
        body = await read_json(request)
        timeout = body.get("timeout", 60)
        if not isinstance(timeout, int | float) or isinstance(timeout, bool) or timeout < 0:
            raise bad_request("timeout must be a number of seconds")
        node = request.match_info["node"]
        try:
            report = await self._plan().drain(self.broker, node, float(timeout))
        except ValueError as e:  # cluster.drain.DrainError: the drain cannot start
            raise not_found(str(e)) if getattr(e, "status", 400) == 404 else bad_request(str(e))
        return json_response(report)

    async def cluster_undrain(self, request: web.Request) -> web.Response:
        """The node takes new queues again (it also does after its next start)."""
        self._admin(request)
        try:
            report = await self._plan().undrain(self.broker, request.match_info["node"])
        except ValueError as e:
            raise not_found(str(e)) if getattr(e, "status", 400) == 404 else bad_request(str(e))
        return json_response(report)
