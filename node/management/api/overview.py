"""Overview, whoami, nodes and cluster status: what the management UI's front page and
`rabbitmqctl`-like tools read."""

from __future__ import annotations

import os
import time
from typing import Any

from aiohttp import web

from ... import __version__
from ...core.alarms import DISK, MEMORY
from ...disk_monitor import DiskLimitError, parse_disk_free_limit
from ...host_settings import DISK_FREE_LIMIT, MEMORY_HIGH_WATERMARK
from ...memory_monitor import WatermarkError, parse_watermark
from ...metrics.collector import disk_free, memory_limit, open_fds, resident_memory
from ...routing.exchange import EXCHANGE_TYPES
from ..app import bad_request, caller, json_response, not_found, read_json
from ..views import channel_count, jsonable, open_channels, queue_figures
from .base import ApiBase


def _store_size(node: Any) -> int | None:
    """Bytes of the message store file (and its write-ahead log), None without a store."""
    store = getattr(node, "store", None)
    path = getattr(store, "path", None)
    if not path:
        return None
    size = 0
    for suffix in ("", "-wal"):
        try:
            size += os.path.getsize(f"{path}{suffix}")
        except OSError:
            pass
    return size


class OverviewApi(ApiBase):
    # -- overview and nodes -------------------------------------------------------------------

    async def index(self, request: web.Request) -> web.StreamResponse:
        """The web UI's page (management/ui); the API itself is under /api/."""
        from ..app import UI_DIR

        resp = web.FileResponse(UI_DIR / "index.html")
        resp.headers["Cache-Control"] = "no-cache"
        return resp

    async def overview(self, request: web.Request) -> web.Response:
        node = self.node
        c = self.broker.counters
        conns = list(self.broker.connections)
        channels = [ch for conn in conns for ch in open_channels(conn)]
        ready = unacked = nqueues = 0
        for vhost in self._visible_vhosts(request):
            for qdef in self.state.vhosts[vhost].queues.values():
                r, u, _c = await queue_figures(self.broker.queue(vhost, qdef.name))
                nqueues += 1
                ready += r
                unacked += u
        # As RabbitMQ's overview: the whole cluster's counts and rates (the peers' from their
        # Pings), the queue totals as this node sees every queue.
        stats_details, totals_details = self.rates.node_details(
            self._rates_query(request), cluster=True
        )
        counts = {
            "publish": c.published,
            "confirm": c.confirmed,
            "deliver": c.delivered_ack,
            "deliver_no_ack": c.delivered_autoack,
            "deliver_get": c.delivered_ack + c.delivered_autoack + c.get_ack + c.get_autoack,
            "get": c.get_ack,
            "get_no_ack": c.get_autoack,
            "get_empty": c.get_empty,
            "redeliver": c.redelivered,
            "ack": c.acked,
            "return_unroutable": c.unroutable_returned,
            "drop_unroutable": c.unroutable_dropped,
        }
        for key, n in self.rates.peer_counts().items():
            counts[key] += n
        if not caller(request).sees_all:
            totals_details = {}  # the node's depth history counts other vhosts' queues
        return json_response(
            {
                "management_version": __version__,
                "rates_mode": "basic",
                "statistics_interval": int(self.rates.interval * 1000),
                "product_name": "Merpati",
                "product_version": __version__,
                "rabbitmq_version": __version__,
                "cluster_name": node.cluster_name,
                "node": node.node_id,
                "erlang_version": "none (Python)",
                "exchange_types": [
                    {"name": t, "description": "", "enabled": True} for t in EXCHANGE_TYPES
                ],
                "message_stats": {
                    **counts,
                    # The rates with their history (management/rates.py).
                    **stats_details,
                },
                "queue_totals": {
                    "messages": ready + unacked,
                    "messages_ready": ready,
                    "messages_unacknowledged": unacked,
                    **totals_details,
                },
                "object_totals": {
                    "connections": len(conns),
                    "channels": sum(channel_count(c) for c in conns),
                    "consumers": sum(len(ch.consumers) for ch in channels),
                    "exchanges": sum(len(vh.exchanges) for vh in self.state.vhosts.values()),
                    "queues": nqueues,
                },
                "churn_rates": {
                    "connection_created": c.connections_opened,
                    "channel_created": c.channels_opened,
                },
                "listeners": [
                    {"node": node.node_id, "protocol": p, "ip_address": ip, "port": port}
                    for p, ip, port in node.listeners
                ],
                "contexts": [],
                "merpati_cluster": self.cluster_status(),
            }
        )

    async def cluster_name(self, request: web.Request) -> web.Response:
        return json_response({"name": self.node.cluster_name})

    async def whoami(self, request: web.Request) -> web.Response:
        who = caller(request)
        return json_response({"name": who.name, "tags": sorted(who.tags)})

    async def extensions(self, request: web.Request) -> web.Response:
        return json_response([])

    def _node_json(self) -> dict[str, Any]:
        node = self.node
        import resource

        rss = resident_memory()
        local = self.broker.alarms.local
        monitor = node.disk_monitor
        free = monitor.free if monitor is not None else None
        return {
            "name": node.node_id,
            "type": "disc",
            "running": True,
            "being_drained": False,
            "os_pid": str(os.getpid()),
            "uptime": int((time.time() - node.started_at) * 1000),
            "mem_used": rss,
            "mem_limit": memory_limit(node),
            # This node's own alarms, as RabbitMQ's per-node fields (the cluster's are in
            # /api/health/checks/alarms).
            "mem_alarm": MEMORY in local,
            "disk_free": free if free is not None else disk_free(node.config.data_dir),
            "disk_free_limit": monitor.limit_bytes if monitor is not None else 0,
            "disk_free_alarm": DISK in local,
            "store_size": _store_size(node),
            "fd_used": open_fds(),
            "fd_total": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
            "sockets_used": len(self.broker.connections),
            "processors": os.cpu_count() or 1,
            "partitions": [],
            "cluster_links": [],
            "applications": [{"name": "merpati", "description": "Merpati", "version": __version__}],
            "raft": jsonable(self.broker.metadata.status())
            if hasattr(self.broker.metadata, "status")
            else None,
        }

    def cluster_status(self) -> dict[str, Any]:
        """Members, running nodes and the Raft leader: from the cluster (ClusterNode) when the node is
        clustered (cluster.cluster_node.ClusterNode.status), else this node alone."""
        plan = getattr(self.node, "cluster", None)
        if plan is not None and hasattr(plan, "status"):
            return jsonable(plan.status())
        status_fn = getattr(self.broker.metadata, "status", None)
        raft = status_fn() if status_fn is not None else {}
        leader = raft.get("leader")
        me = self.node.node_id
        return {
            "members": {me: ""},
            "running": [me],
            "raft_leader": me if leader is None or str(leader) == str(raft.get("self")) else None,
            "raft_term": raft.get("raft_term"),
            "commit_index": raft.get("commit_idx"),
        }

    async def nodes(self, request: web.Request) -> web.Response:
        # Every member; this node with its figures, the others as the cluster knows them.
        status = self.cluster_status()
        me = self._node_json()
        # Each node's rates: this node's sampled here, the others' from their Ping answers.
        rq = self._rates_query(request)
        me["message_stats"] = self.rates.node_details(rq)[0]
        out = [me]
        running = set(status.get("running") or ())
        remote = self.broker.alarms.remote
        for name, address in sorted((status.get("members") or {}).items()):
            if name != self.node.node_id:
                alarms = remote.get(name, frozenset())
                out.append(
                    {
                        "name": name,
                        "type": "disc",
                        "running": name in running,
                        "cluster_address": address,
                        # Its alarms as its last Ping answer gave them (none once it is down).
                        "mem_alarm": MEMORY in alarms,
                        "disk_free_alarm": DISK in alarms,
                    }
                )
                stats = self.rates.peer_details(name, rq)
                if stats is not None:
                    out[-1]["message_stats"] = stats
        return json_response(out)

    async def node_detail(self, request: web.Request) -> web.Response:
        if request.match_info["node"] != self.node.node_id:
            raise not_found(f"no node '{request.match_info['node']}'")
        return json_response(self._node_json())

    # -- node-local settings (rabbitmqctl set_disk_free_limit) ----------------------------------

    def _disk_limit_json(self) -> dict[str, Any]:
        monitor = self.node.disk_monitor
        if monitor is None:
            raise not_found("this node has no disk monitor")
        return {
            "node": self.node.node_id,
            "disk_free_limit": monitor.limit_bytes,
            "setting": str(monitor.limit),
            "disk_free": monitor.free,
            "disk_free_alarm": monitor.alarmed,
        }

    def _memory_json(self) -> dict[str, Any]:
        monitor = self.node.memory_monitor
        if monitor is None:
            raise not_found("this node has no memory monitor")
        return {
            "node": self.node.node_id,
            "mem_limit": monitor.limit_bytes,
            "setting": str(monitor.watermark),
            "mem_used": resident_memory(),
            "mem_alarm": monitor.alarmed,
        }

    async def memory_watermark(self, request: web.Request) -> web.Response:
        return json_response(self._memory_json())

    async def memory_watermark_put(self, request: web.Request) -> web.Response:
        """{"limit": 0.4} (a fraction of RAM) or {"limit": "2GB", "absolute": true}: this
        node's memory high watermark until it restarts (rabbitmqctl
        set_vm_memory_high_watermark), checked against the memory in use before the answer."""
        self._admin(request)
        body = await read_json(request)
        try:
            watermark = parse_watermark(body.get("limit"), bool(body.get("absolute")))  # type: ignore[arg-type]
        except WatermarkError as e:
            raise bad_request(str(e))
        monitor = self.node.memory_monitor
        if monitor is None:
            raise not_found("this node has no memory monitor")
        monitor.set_watermark(watermark)
        self._share_with_host(
            MEMORY_HIGH_WATERMARK,
            {"limit": body.get("limit"), "absolute": bool(body.get("absolute"))},
        )
        return json_response(self._memory_json())

    def _share_with_host(self, setting: str, body: dict[str, Any]) -> None:
        """A worker of `--workers` passes a node-local setting on to the host's other workers:
        the request reached this one by chance (node/host_settings.py)."""
        shared = self.node.host_settings
        if shared is not None:
            shared.put(setting, body)

    async def disk_free_limit(self, request: web.Request) -> web.Response:
        return json_response(self._disk_limit_json())

    async def disk_free_limit_put(self, request: web.Request) -> web.Response:
        """{"limit": "2GB" | 2000000000 | "mem_relative:1.0"}: this node's disk free limit
        until it restarts (the configured one comes back then, as with rabbitmqctl), checked
        against the free space before the answer."""
        self._admin(request)
        body = await read_json(request)
        try:
            limit = parse_disk_free_limit(body.get("limit"))  # type: ignore[arg-type]
        except DiskLimitError as e:
            raise bad_request(str(e))
        monitor = self.node.disk_monitor
        if monitor is None:
            raise not_found("this node has no disk monitor")
        await monitor.set_limit(limit)
        self._share_with_host(DISK_FREE_LIMIT, {"limit": body.get("limit")})
        return json_response(self._disk_limit_json())
