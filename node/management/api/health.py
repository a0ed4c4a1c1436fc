"""Health checks (/api/health/checks/...) and the aliveness test, as RabbitMQ answers them."""

from __future__ import annotations

from aiohttp import web

from ...core.alarms import HEALTH_NAMES
from ..app import bad_request, json_response
from .base import ApiBase


class HealthApi(ApiBase):
    # -- health checks ------------------------------------------------------------------------

    async def health_alarms(self, request: web.Request) -> web.Response:
        """Every resource alarm in effect in the cluster, this node's and those the other
        nodes reported (node.core.alarms); RabbitMQ's body and texts."""
        return self._alarms_answer(
            self.broker.alarms.by_node(), "There are alarms in effect in the cluster"
        )

    async def health_local_alarms(self, request: web.Request) -> web.Response:
        alarms = self.broker.alarms
        return self._alarms_answer(
            [(n, r) for n, r in alarms.by_node() if n == alarms.node_id],
            "There are alarms in effect on the node",
        )

    def _alarms_answer(self, rows: list[tuple[str, str]], reason: str) -> web.Response:
        if not rows:
            return json_response({"status": "ok"})
        return json_response(
            {
                "status": "failed",
                "reason": reason,
                "alarms": [{"node": n, "resource": HEALTH_NAMES[r]} for n, r in rows],
            },
            503,
        )

    async def health_quorum_critical(self, request: web.Request) -> web.Response:
        """Critical: stopping this node would leave the metadata (Raft), or a quorum queue with
        a replica here, without a majority of its members running. A single node has none to
        lose, and RabbitMQ answers ok there too."""
        plan = getattr(self.node, "cluster", None)
        if plan is None or not plan.clustered:
            return json_response({"status": "ok"})
        members = plan.membership.members
        live = plan.membership.live()
        majority = len(members) // 2 + 1
        if len(live) - 1 < majority:
            return json_response(
                {
                    "status": "failed",
                    "reason": f"stopping this node would leave {len(live) - 1} of {len(members)} "
                    f"members running, fewer than the Raft majority of {majority}",
                },
                status=503,
            )
        me = self.node.node_id
        critical = []
        for vh in self.node.broker.state.vhosts.values():
            for q in vh.queues.values():
                if me in q.replicas:
                    running = sum(1 for r in q.replicas if r in live)
                    if running - 1 < len(q.replicas) // 2 + 1:
                        critical.append({"name": q.name, "virtual_host": q.vhost})
        if critical:
            return json_response(
                {
                    "status": "failed",
                    "reason": "There are quorum queues that would lose their quorum if the "
                    "target node is shut down",
                    "queues": critical,
                },
                status=503,
            )
        return json_response({"status": "ok"})

    async def health_vhosts(self, request: web.Request) -> web.Response:
        return json_response({"status": "ok"})

    async def health_port(self, request: web.Request) -> web.Response:
        try:
            port = int(request.match_info["port"])
        except ValueError:
            raise bad_request("port must be an integer")
        if any(p == port for _, _, p in self.node.listeners):
            return json_response({"status": "ok", "port": port})
        return json_response(
            {"status": "failed", "reason": f"No active listener on port {port}", "missing": port},
            503,
        )

    async def health_protocol(self, request: web.Request) -> web.Response:
        proto = request.match_info["protocol"].lower().replace("-", "")
        names = {p.replace("-", "").replace("/", "") for p, _, _ in self.node.listeners}
        aliases = {"amqp091": "amqp", "amqp0.9.1": "amqp", "amqp": "amqp", "http": "http"}
        if aliases.get(proto, proto) in names:
            return json_response({"status": "ok", "protocol": request.match_info["protocol"]})
        return json_response(
            {
                "status": "failed",
                "reason": f"No active listener for {request.match_info['protocol']}",
            },
            503,
        )

    async def health_ready(self, request: web.Request) -> web.Response:
        return json_response({"status": "ok"})

    async def aliveness(self, request: web.Request) -> web.Response:
        self._vhost(request)
        return json_response({"status": "ok"})
