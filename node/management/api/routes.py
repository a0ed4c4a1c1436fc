"""All the management API's routes in one table: `ManagementApi` combines the route groups
(one module per resource) and registers their handlers under RabbitMQ's paths."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .bindings import BindingsApi
from .cluster_ops import ClusterOpsApi
from .connections import ConnectionsApi
from .definitions import DefinitionsApi
from .exchanges import ExchangesApi
from .health import HealthApi
from .limits import LimitsApi
from .overview import OverviewApi
from .policies import PoliciesApi
from .queues import QueuesApi
from .vhosts_users import VhostsUsersApi


class ManagementApi(
    OverviewApi,
    ClusterOpsApi,
    ConnectionsApi,
    ExchangesApi,
    QueuesApi,
    BindingsApi,
    VhostsUsersApi,
    PoliciesApi,
    LimitsApi,
    DefinitionsApi,
    HealthApi,
):
    def register(self, r: web.UrlDispatcher) -> None:
        r.add_get("/", self.index)
        r.add_get("/api/overview", self.overview)
        r.add_get("/api/cluster-name", self.cluster_name)
        r.add_get("/api/whoami", self.whoami)
        r.add_get("/api/extensions", self.extensions)
        r.add_get("/api/nodes", self.nodes)
        r.add_get("/api/nodes/{node}", self.node_detail)
        # Merpati's cluster operations (no RabbitMQ equivalent over HTTP)
        r.add_post("/api/merpati/cluster/nodes", self.cluster_add_node)
        r.add_delete("/api/merpati/cluster/nodes/{node}", self.cluster_remove_node)
        r.add_post("/api/merpati/cluster/rebalance", self.cluster_rebalance)
        r.add_get("/api/merpati/quorum/{vhost}/{name}", self.quorum_status)
        r.add_post("/api/merpati/quorum/grow", self.quorum_grow)
        r.add_post("/api/merpati/quorum/shrink", self.quorum_shrink)
        r.add_post("/api/merpati/queues/{vhost}/{name}/move", self.queue_move)
        r.add_post("/api/merpati/cluster/nodes/{node}/drain", self.cluster_drain)
        r.add_post("/api/merpati/cluster/nodes/{node}/undrain", self.cluster_undrain)
        r.add_put("/api/merpati/vhost-limits/{vhost}", self.vhost_limits_put)
        r.add_delete("/api/merpati/vhost-limits/{vhost}", self.vhost_limits_delete)
        r.add_put("/api/merpati/user-limits/{user}", self.user_limits_put)
        # this node's settings (rabbitmqctl set_disk_free_limit: node-local, until a restart)
        r.add_get("/api/merpati/node/disk-free-limit", self.disk_free_limit)
        r.add_put("/api/merpati/node/disk-free-limit", self.disk_free_limit_put)
        # rabbitmqctl set_vm_memory_high_watermark: node-local, until a restart
        r.add_get("/api/merpati/node/memory-high-watermark", self.memory_watermark)
        r.add_put("/api/merpati/node/memory-high-watermark", self.memory_watermark_put)
        # connections, channels, consumers
        r.add_get("/api/connections", self.connections)
        r.add_get("/api/vhosts/{vhost}/connections", self.connections)
        r.add_get("/api/connections/{name}", self.connection)
        r.add_delete("/api/connections/{name}", self.connection_close)
        r.add_get("/api/connections/{name}/channels", self.channels)
        r.add_get("/api/channels", self.channels)
        r.add_get("/api/vhosts/{vhost}/channels", self.channels)
        r.add_get("/api/consumers", self.consumers)
        r.add_get("/api/consumers/{vhost}", self.consumers)
        # exchanges
        r.add_get("/api/exchanges", self.exchanges)
        r.add_get("/api/exchanges/{vhost}", self.exchanges)
        r.add_get("/api/exchanges/{vhost}/{name}", self.exchange)
        r.add_put("/api/exchanges/{vhost}/{name}", self.exchange_put)
        r.add_delete("/api/exchanges/{vhost}/{name}", self.exchange_delete)
        r.add_get("/api/exchanges/{vhost}/{name}/bindings/source", self.exchange_bindings_source)
        r.add_get("/api/exchanges/{vhost}/{name}/bindings/destination", self.exchange_bindings_dest)
        r.add_post("/api/exchanges/{vhost}/{name}/publish", self.exchange_publish)
        # queues
        r.add_get("/api/queues", self.queues)
        r.add_get("/api/queues/{vhost}", self.queues)
        r.add_get("/api/queues/{vhost}/{name}", self.queue)
        r.add_put("/api/queues/{vhost}/{name}", self.queue_put)
        r.add_delete("/api/queues/{vhost}/{name}", self.queue_delete)
        r.add_delete("/api/queues/{vhost}/{name}/contents", self.queue_purge)
        r.add_post("/api/queues/{vhost}/{name}/get", self.queue_get)
        r.add_get("/api/queues/{vhost}/{name}/bindings", self.queue_bindings)
        # bindings
        r.add_get("/api/bindings", self.bindings)
        r.add_get("/api/bindings/{vhost}", self.bindings)
        for dk in ("q", "e"):
            base = "/api/bindings/{vhost}/e/{source}/" + dk + "/{dest}"
            r.add_get(base, _with_kind(self.binding_list, dk))
            r.add_post(base, _with_kind(self.binding_create, dk))
            r.add_get(base + "/{props}", _with_kind(self.binding_get, dk))
            r.add_delete(base + "/{props}", _with_kind(self.binding_delete, dk))
        # vhosts, users, permissions, policies
        r.add_get("/api/vhosts", self.vhosts)
        r.add_get("/api/vhosts/{vhost}", self.vhost)
        r.add_put("/api/vhosts/{vhost}", self.vhost_put)
        r.add_delete("/api/vhosts/{vhost}", self.vhost_delete)
        r.add_get("/api/vhosts/{vhost}/permissions", self.vhost_permissions)
        r.add_get("/api/users", self.users)
        r.add_get("/api/users/without-permissions", self.users_without_permissions)
        r.add_get("/api/users/{user}", self.user)
        r.add_put("/api/users/{user}", self.user_put)
        r.add_delete("/api/users/{user}", self.user_delete)
        r.add_get("/api/users/{user}/permissions", self.user_permissions)
        r.add_get("/api/permissions", self.permissions)
        r.add_get("/api/permissions/{vhost}/{user}", self.permission)
        r.add_put("/api/permissions/{vhost}/{user}", self.permission_put)
        r.add_delete("/api/permissions/{vhost}/{user}", self.permission_delete)
        r.add_get("/api/policies", self.policies)
        r.add_get("/api/policies/{vhost}", self.policies)
        r.add_get("/api/policies/{vhost}/{name}", self.policy)
        r.add_put("/api/policies/{vhost}/{name}", self.policy_put)
        r.add_delete("/api/policies/{vhost}/{name}", self.policy_delete)
        # limits
        r.add_get("/api/vhost-limits", self.vhost_limits)
        r.add_get("/api/vhost-limits/{vhost}", self.vhost_limits)
        r.add_put("/api/vhost-limits/{vhost}/{name}", self.vhost_limit_put)
        r.add_delete("/api/vhost-limits/{vhost}/{name}", self.vhost_limit_delete)
        r.add_get("/api/user-limits", self.user_limits)
        r.add_get("/api/user-limits/{user}", self.user_limits)
        r.add_put("/api/user-limits/{user}/{name}", self.user_limit_put)
        r.add_delete("/api/user-limits/{user}/{name}", self.user_limit_delete)
        # definitions
        r.add_get("/api/definitions", self.definitions_get)
        r.add_post("/api/definitions", self.definitions_post)
        r.add_get("/api/definitions/{vhost}", self.definitions_get)
        r.add_post("/api/definitions/{vhost}", self.definitions_post)
        # health checks
        r.add_get("/api/health/checks/alarms", self.health_alarms)
        r.add_get("/api/health/checks/local-alarms", self.health_local_alarms)
        r.add_get("/api/health/checks/node-is-quorum-critical", self.health_quorum_critical)
        r.add_get("/api/health/checks/node-is-mirror-sync-critical", self.health_quorum_critical)
        r.add_get("/api/health/checks/virtual-hosts", self.health_vhosts)
        r.add_get("/api/health/checks/port-listener/{port}", self.health_port)
        r.add_get("/api/health/checks/protocol-listener/{protocol}", self.health_protocol)
        r.add_get("/api/health/checks/ready-to-serve-clients", self.health_ready)
        r.add_get("/api/aliveness-test/{vhost}", self.aliveness)


def _with_kind(handler: Any, dkind: str) -> Any:
    async def bound(request: web.Request) -> web.StreamResponse:
        return await handler(request, dkind)

    return bound
