"""The management API's routes: RabbitMQ's paths and JSON shapes over this node's broker.

Reads come from the live state (metadata, queues, connections) on the event loop. Every change to
metadata is a command proposed through `broker.propose` and awaited, exactly as a channel does, so
on a cluster the same handlers wait for Raft. Queue operations that are not metadata (purge, get,
publish) go through the `QueueHandle` seam. Vhost names are percent-encoded in paths (`%2F`).
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .. import __version__
from ..broker import hash_password
from ..core.declare import (
    ACCESS_REFUSED,
    DeclareError,
    check_exchange_declare,
    check_queue_declare,
)
from ..core.outcome import ACCEPTED, REJECTED, RELEASED
from ..core.publish import UNROUTED
from ..metadata import commands as cmds
from ..metrics.collector import disk_free, open_fds, physical_memory, resident_memory
from ..routing.exchange import EXCHANGE_TYPES
from . import definitions
from .app import (
    ApiError,
    Caller,
    bad_request,
    caller,
    json_response,
    not_authorised,
    not_found,
    read_json,
)
from .views import (
    channel_count,
    channel_json,
    connection_json,
    connection_name,
    consumer_json,
    exchange_json,
    jsonable,
    message_json,
    open_channels,
    props_key,
    queue_figures,
    queue_json,
    vhost_bindings,
)

if TYPE_CHECKING:
    from ..server import Node


def _no_content() -> web.Response:
    return web.Response(status=204)


def _flag(request: web.Request, name: str) -> bool:
    return request.query.get(name, "").lower() in ("true", "1", "yes")


def _bool(body: dict[str, Any], key: str, default: bool) -> bool:
    value = body.get(key, default)
    if isinstance(value, str):
        return value.lower() in ("true", "1", "yes")
    return bool(value)


def _tags(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(t.strip() for t in value.split(",") if t.strip())
    if isinstance(value, list):
        return tuple(str(t) for t in value)
    raise bad_request("tags must be a comma-separated string or a list")


class ManagementApi:
    def __init__(self, node: Node) -> None:
        self.node = node

    @property
    def broker(self) -> Any:
        return self.node.broker

    @property
    def state(self) -> Any:
        return self.node.broker.state

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
        r.add_post("/api/merpati/cluster/nodes/{node}/drain", self.cluster_drain)
        r.add_post("/api/merpati/cluster/nodes/{node}/undrain", self.cluster_undrain)
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
        # definitions
        r.add_get("/api/definitions", self.definitions_get)
        r.add_post("/api/definitions", self.definitions_post)
        r.add_get("/api/definitions/{vhost}", self.definitions_get)
        r.add_post("/api/definitions/{vhost}", self.definitions_post)
        # health checks
        r.add_get("/api/health/checks/alarms", self.health_alarms)
        r.add_get("/api/health/checks/local-alarms", self.health_alarms)
        r.add_get("/api/health/checks/node-is-quorum-critical", self.health_quorum_critical)
        r.add_get("/api/health/checks/node-is-mirror-sync-critical", self.health_quorum_critical)
        r.add_get("/api/health/checks/virtual-hosts", self.health_vhosts)
        r.add_get("/api/health/checks/port-listener/{port}", self.health_port)
        r.add_get("/api/health/checks/protocol-listener/{protocol}", self.health_protocol)
        r.add_get("/api/health/checks/ready-to-serve-clients", self.health_ready)
        r.add_get("/api/aliveness-test/{vhost}", self.aliveness)

    # -- access helpers -----------------------------------------------------------------------

    def _vhost(self, request: web.Request, write: bool = False) -> str:
        vhost = request.match_info["vhost"]
        if vhost not in self.state.vhosts:
            raise not_found(f"no vhost '{vhost}'")
        self._check_vhost(caller(request), vhost, write)
        return vhost

    def _check_vhost(self, who: Caller, vhost: str, write: bool = False) -> None:
        if write and not who.is_admin:
            raise not_authorised("Not administrator user")
        if not who.sees_all and (who.name, vhost) not in self.state.permissions:
            raise not_authorised(f"Not authorised to access vhost '{vhost}'")

    def _visible_vhosts(self, request: web.Request) -> list[str]:
        who = caller(request)
        if "vhost" in request.match_info:
            return [self._vhost(request)]
        return [
            v for v in self.state.vhosts if who.sees_all or (who.name, v) in self.state.permissions
        ]

    def _admin(self, request: web.Request) -> None:
        if not caller(request).is_admin:
            raise not_authorised("Not administrator user")

    async def _propose(self, cmd: Any) -> Any:
        return await self.broker.propose(cmd)

    # -- overview and nodes -------------------------------------------------------------------

    async def index(self, request: web.Request) -> web.Response:
        return web.Response(
            text="Merpati management HTTP API (RabbitMQ-compatible subset) under /api/\n"
        )

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
        return json_response(
            {
                "management_version": __version__,
                "rates_mode": "none",
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
                    "publish": c.published,
                    "confirm": c.confirmed,
                    "deliver": c.delivered_ack,
                    "deliver_no_ack": c.delivered_autoack,
                    "deliver_get": c.delivered_ack
                    + c.delivered_autoack
                    + c.get_ack
                    + c.get_autoack,
                    "get": c.get_ack,
                    "get_no_ack": c.get_autoack,
                    "get_empty": c.get_empty,
                    "redeliver": c.redelivered,
                    "ack": c.acked,
                    "return_unroutable": c.unroutable_returned,
                    "drop_unroutable": c.unroutable_dropped,
                },
                "queue_totals": {
                    "messages": ready + unacked,
                    "messages_ready": ready,
                    "messages_unacknowledged": unacked,
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

    async def cluster_name(self, request: web.Request) -> web.Response:
        return json_response({"name": self.node.cluster_name})

    async def whoami(self, request: web.Request) -> web.Response:
        who = caller(request)
        return json_response({"name": who.name, "tags": sorted(who.tags)})

    async def extensions(self, request: web.Request) -> web.Response:
        return json_response([])

    def _node_json(self) -> dict[str, Any]:
        node = self.node
        import os
        import resource

        rss = resident_memory()
        return {
            "name": node.node_id,
            "type": "disc",
            "running": True,
            "being_drained": False,
            "os_pid": str(os.getpid()),
            "uptime": int((time.time() - node.started_at) * 1000),
            "mem_used": rss,
            "mem_limit": int(node.config.memory_high_watermark * physical_memory()),
            "mem_alarm": bool(self.broker.blocked),
            "disk_free": disk_free(node.config.data_dir),
            "disk_free_limit": 0,
            "disk_free_alarm": False,
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
        out = [self._node_json()]
        running = set(status.get("running") or ())
        for name, address in sorted((status.get("members") or {}).items()):
            if name != self.node.node_id:
                out.append(
                    {
                        "name": name,
                        "type": "disc",
                        "running": name in running,
                        "cluster_address": address,
                    }
                )
        return json_response(out)

    async def node_detail(self, request: web.Request) -> web.Response:
        if request.match_info["node"] != self.node.node_id:
            raise not_found(f"no node '{request.match_info['node']}'")
        return json_response(self._node_json())

    # -- connections, channels, consumers -----------------------------------------------------

    def _conns(self, request: web.Request) -> list[Any]:
        who = caller(request)
        vhosts = set(self._visible_vhosts(request))
        return sorted(
            (
                c
                for c in self.broker.connections
                if c.vhost in vhosts and (who.sees_all or c.user == who.name)
            ),
            key=lambda c: c.id,
        )

    def _find_conn(self, request: web.Request) -> Any:
        name = request.match_info["name"]
        for c in self._conns(request):
            if connection_name(c) == name or c.id == name:
                return c
        raise not_found(f"no connection '{name}'")

    async def connections(self, request: web.Request) -> web.Response:
        return json_response([connection_json(self.node, c) for c in self._conns(request)])

    async def connection(self, request: web.Request) -> web.Response:
        return json_response(connection_json(self.node, self._find_conn(request)))

    async def connection_close(self, request: web.Request) -> web.Response:
        conn = self._find_conn(request)
        who = caller(request)
        if not who.is_admin and conn.user != who.name:
            raise not_authorised("Not administrator user")
        conn.force_close(request.headers.get("X-Reason", "Closed via management plugin"))
        conn.flush_soon()
        return _no_content()

    async def channels(self, request: web.Request) -> web.Response:
        conns = [self._find_conn(request)] if "name" in request.match_info else self._conns(request)
        out = [channel_json(self.node, conn, ch) for conn in conns for ch in open_channels(conn)]
        return json_response(out)

    async def consumers(self, request: web.Request) -> web.Response:
        out = [
            consumer_json(self.node, conn, ch, c)
            for conn in self._conns(request)
            for ch in open_channels(conn)
            for c in ch.consumers.values()
        ]
        return json_response(out)

    # -- exchanges ----------------------------------------------------------------------------

    async def exchanges(self, request: web.Request) -> web.Response:
        out = []
        for vhost in self._visible_vhosts(request):
            vh = self.state.vhosts[vhost]
            out += [exchange_json(self.node, vhost, vh.exchanges[n]) for n in sorted(vh.exchanges)]
        return json_response(out)

    def _exchange(self, request: web.Request, write: bool = False) -> tuple[str, Any]:
        vhost = self._vhost(request, write)
        name = request.match_info["name"]
        if name == "amq.default":
            name = ""
        ex = self.state.exchange(vhost, name)
        if ex is None:
            raise not_found(f"no exchange '{name}' in vhost '{vhost}'")
        return vhost, ex

    async def exchange(self, request: web.Request) -> web.Response:
        vhost, ex = self._exchange(request)
        return json_response(exchange_json(self.node, vhost, ex))

    async def exchange_put(self, request: web.Request) -> web.Response:
        vhost = self._vhost(request, write=True)
        name = request.match_info["name"]
        body = await read_json(request)
        type_ = body.get("type")
        if not type_:
            raise bad_request("exchange type is required ('type')")
        args = body.get("arguments") or {}
        if not isinstance(args, dict):
            raise bad_request("arguments must be an object")
        exists = self.state.exchange(vhost, name) is not None
        with _declare_refused():
            check_exchange_declare(vhost, name, type_, args, exists=exists)
        result = await self._propose(
            cmds.DeclareExchange(
                vhost,
                name,
                type_,
                _bool(body, "durable", True),
                _bool(body, "auto_delete", False),
                _bool(body, "internal", False),
                args,
            )
        )
        return web.Response(status=201 if result == "created" else 204)

    async def exchange_delete(self, request: web.Request) -> web.Response:
        vhost, ex = self._exchange(request, write=True)
        if not ex.name or ex.name.startswith("amq."):
            raise ApiError(
                403,
                "access_refused",
                f"deletion of system exchange '{ex.name}' in vhost '{vhost}' not allowed",
            )
        await self._propose(cmds.DeleteExchange(vhost, ex.name, _flag(request, "if-unused")))
        return _no_content()

    async def exchange_bindings_source(self, request: web.Request) -> web.Response:
        vhost, ex = self._exchange(request)
        return json_response(
            [b for b in vhost_bindings(self.node, vhost) if b["source"] == ex.name]
        )

    async def exchange_bindings_dest(self, request: web.Request) -> web.Response:
        vhost, ex = self._exchange(request)
        return json_response(
            [
                b
                for b in vhost_bindings(self.node, vhost)
                if b["destination_type"] == "exchange" and b["destination"] == ex.name
            ]
        )

    async def exchange_publish(self, request: web.Request) -> web.Response:
        from ..core.message import Message
        from ..wire.properties import encode_properties

        vhost, ex = self._exchange(request)
        who = caller(request)
        self.broker.check(who.name, vhost, "write", "exchange", ex.name)
        body = await read_json(request)
        rk = str(body.get("routing_key", ""))
        payload = body.get("payload", "")
        if body.get("payload_encoding", "string") == "base64":
            try:
                data = base64.b64decode(payload)
            except ValueError:
                raise bad_request("payload is not valid base64")
        else:
            data = str(payload).encode("utf-8")
        props = dict(body.get("properties") or {})
        if "delivery_mode" in props:
            props["delivery_mode"] = int(props["delivery_mode"])
        try:
            props_raw = encode_properties(props)
        except Exception as e:
            raise bad_request(f"invalid properties: {e}")
        msg = Message(ex.name, rk, None, props_raw, data)
        # Nobody waits for a confirm; a message held by an x-delayed-message exchange counts as
        # routed, as the plugin answers.
        result, _ = self.broker.publish(vhost, ex, msg, confirm=False)
        self.broker.counters.published += 1
        return json_response({"routed": result != UNROUTED})

    # -- queues -------------------------------------------------------------------------------

    async def queues(self, request: web.Request) -> web.Response:
        out = []
        for vhost in self._visible_vhosts(request):
            vh = self.state.vhosts[vhost]
            out += [await queue_json(self.node, vhost, vh.queues[n]) for n in sorted(vh.queues)]
        return json_response(out)

    def _queue(self, request: web.Request, write: bool = False) -> tuple[str, Any]:
        vhost = self._vhost(request, write)
        name = request.match_info["name"]
        qdef = self.state.queue(vhost, name)
        if qdef is None:
            raise not_found(f"no queue '{name}' in vhost '{vhost}'")
        return vhost, qdef

    async def queue(self, request: web.Request) -> web.Response:
        vhost, qdef = self._queue(request)
        return json_response(await queue_json(self.node, vhost, qdef))

    async def queue_put(self, request: web.Request) -> web.Response:
        vhost = self._vhost(request, write=True)
        name = request.match_info["name"]
        if not name:
            raise bad_request("queue name is required")
        body = await read_json(request)
        args = body.get("arguments") or {}
        if not isinstance(args, dict):
            raise bad_request("arguments must be an object")
        with _declare_refused():
            check_queue_declare(vhost, name, args)
        result = await self._propose(
            cmds.DeclareQueue(
                vhost,
                name,
                _bool(body, "durable", True),
                None,
                _bool(body, "auto_delete", False),
                args,
                self.broker.place_queue(False),
            )
        )
        return web.Response(status=201 if result == "created" else 204)

    async def queue_delete(self, request: web.Request) -> web.Response:
        vhost, qdef = self._queue(request, write=True)
        messages, unacked, consumers = await queue_figures(self.broker.queue(vhost, qdef.name))
        if _flag(request, "if-unused") and consumers:
            raise bad_request(f"queue '{qdef.name}' in vhost '{vhost}' in use")
        if _flag(request, "if-empty") and (messages or unacked):
            raise bad_request(f"queue '{qdef.name}' in vhost '{vhost}' not empty")
        await self._propose(cmds.DeleteQueue(vhost, qdef.name))
        return _no_content()

    async def queue_purge(self, request: web.Request) -> web.Response:
        vhost, qdef = self._queue(request)
        who = caller(request)
        self.broker.check(who.name, vhost, "read", "queue", qdef.name)
        q = self.broker.queue(vhost, qdef.name)
        if q is not None:
            await q.purge()
        return _no_content()

    async def queue_get(self, request: web.Request) -> web.Response:
        vhost, qdef = self._queue(request)
        who = caller(request)
        self.broker.check(who.name, vhost, "read", "queue", qdef.name)
        body = await read_json(request)
        try:
            count = int(body.get("count", 1))
        except (TypeError, ValueError):
            raise bad_request("count must be an integer")
        ackmode = body.get("ackmode", "ack_requeue_true")
        if isinstance(body.get("requeue"), bool):  # the pre-3.7 form
            ackmode = "ack_requeue_true" if body["requeue"] else "ack_requeue_false"
        outcomes = {
            "ack_requeue_true": RELEASED,
            "reject_requeue_true": RELEASED,
            "ack_requeue_false": ACCEPTED,
            "reject_requeue_false": REJECTED,
        }
        if ackmode not in outcomes:
            raise bad_request(f"invalid ackmode '{ackmode}'")
        encoding = body.get("encoding", "auto")
        truncate = body.get("truncate")
        truncate = int(truncate) if truncate is not None else None
        q = self.broker.queue(vhost, qdef.name)
        if q is None:
            return json_response([])
        taken = []
        for _ in range(max(0, count)):
            msg, _ = await q.get(True)
            if msg is None:
                break
            taken.append(msg)
        remaining = (await queue_figures(q))[0]
        out = []
        for i, msg in enumerate(taken):
            out.append(message_json(msg, remaining + len(taken) - i - 1, encoding, truncate))
        outcome = outcomes[ackmode]
        for msg in taken:
            q.settle(msg, outcome)
        return json_response(out)

    async def queue_bindings(self, request: web.Request) -> web.Response:
        vhost, qdef = self._queue(request)
        return json_response(
            [
                b
                for b in vhost_bindings(self.node, vhost)
                if b["destination_type"] == "queue" and b["destination"] == qdef.name
            ]
        )

    # -- bindings -----------------------------------------------------------------------------

    async def bindings(self, request: web.Request) -> web.Response:
        out = []
        for vhost in self._visible_vhosts(request):
            out += vhost_bindings(self.node, vhost)
        return json_response(out)

    def _binding_ends(
        self, request: web.Request, dkind: str, write: bool = False
    ) -> tuple[str, str, str, str]:
        vhost = self._vhost(request, write)
        source = request.match_info["source"]
        dest = request.match_info["dest"]
        if source == "amq.default":
            source = ""
        if self.state.exchange(vhost, source) is None:
            raise not_found(f"no exchange '{source}' in vhost '{vhost}'")
        if dkind == "q" and self.state.queue(vhost, dest) is None:
            raise not_found(f"no queue '{dest}' in vhost '{vhost}'")
        if dkind == "e" and self.state.exchange(vhost, dest) is None:
            raise not_found(f"no exchange '{dest}' in vhost '{vhost}'")
        return vhost, source, dkind, dest

    def _matching(self, vhost: str, source: str, dkind: str, dest: str) -> list[dict[str, Any]]:
        dtype = "queue" if dkind == "q" else "exchange"
        return [
            b
            for b in vhost_bindings(self.node, vhost)
            if b["source"] == source and b["destination_type"] == dtype and b["destination"] == dest
        ]

    async def binding_list(self, request: web.Request, dkind: str) -> web.Response:
        return json_response(self._matching(*self._binding_ends(request, dkind)))

    async def binding_create(self, request: web.Request, dkind: str) -> web.Response:
        vhost, source, dkind, dest = self._binding_ends(request, dkind, write=True)
        if not source:
            raise ApiError(403, "access_refused", "operation not permitted on the default exchange")
        body = await read_json(request)
        rk = str(body.get("routing_key", ""))
        args = body.get("arguments") or {}
        if not isinstance(args, dict):
            raise bad_request("arguments must be an object")
        await self._propose(cmds.Bind(vhost, source, dkind, dest, rk, args))
        resp = web.Response(status=201)
        resp.headers["Location"] = props_key(rk, args)
        return resp

    def _find_binding(
        self, request: web.Request, dkind: str, write: bool = False
    ) -> dict[str, Any]:
        ends = self._binding_ends(request, dkind, write)
        key = request.match_info["props"]
        from urllib.parse import quote

        for b in self._matching(*ends):
            if b["properties_key"] in (key, quote(key, safe="")):
                return b
        raise not_found(f"no binding '{key}'")

    async def binding_get(self, request: web.Request, dkind: str) -> web.Response:
        return json_response(self._find_binding(request, dkind))

    async def binding_delete(self, request: web.Request, dkind: str) -> web.Response:
        b = self._find_binding(request, dkind, write=True)
        if not b["source"]:
            raise ApiError(403, "access_refused", "operation not permitted on the default exchange")
        vh = self.state.vhosts[b["vhost"]]
        dkind = "q" if b["destination_type"] == "queue" else "e"
        # The stored arguments (not their JSON form) identify the binding.
        args: dict[str, Any] = {}
        for bb in vh.exchanges[b["source"]].bindings.values():
            if (
                bb.destination == (dkind, b["destination"])
                and props_key(bb.routing_key, bb.arguments) == b["properties_key"]
            ):
                args = bb.arguments
                break
        await self._propose(
            cmds.Unbind(b["vhost"], b["source"], dkind, b["destination"], b["routing_key"], args)
        )
        return _no_content()

    # -- vhosts -------------------------------------------------------------------------------

    async def _vhost_json(self, vhost: str) -> dict[str, Any]:
        ready = unacked = 0
        for qdef in self.state.vhosts[vhost].queues.values():
            r, u, _c = await queue_figures(self.broker.queue(vhost, qdef.name))
            ready += r
            unacked += u
        return {
            "name": vhost,
            "description": "",
            "tags": [],
            "metadata": {"description": "", "tags": []},
            "default_queue_type": "classic",
            "tracing": False,
            "messages": ready + unacked,
            "messages_ready": ready,
            "messages_unacknowledged": unacked,
            "cluster_state": {self.node.node_id: "running"},
        }

    async def vhosts(self, request: web.Request) -> web.Response:
        return json_response(
            [await self._vhost_json(v) for v in sorted(self._visible_vhosts(request))]
        )

    async def vhost(self, request: web.Request) -> web.Response:
        return json_response(await self._vhost_json(self._vhost(request)))

    async def vhost_put(self, request: web.Request) -> web.Response:
        self._admin(request)
        vhost = request.match_info["vhost"]
        await read_json(request)
        result = await self._propose(cmds.AddVhost(vhost))
        if result == "created":
            # As RabbitMQ: the creating user gets full permissions on the new vhost.
            await self._propose(cmds.SetPermissions(caller(request).name, vhost))
        return web.Response(status=201 if result == "created" else 204)

    async def vhost_delete(self, request: web.Request) -> web.Response:
        self._admin(request)
        vhost = self._vhost(request, write=True)
        for name in list(self.state.vhosts[vhost].queues):
            await self._propose(cmds.DeleteQueue(vhost, name))
        await self._propose(cmds.DeleteVhost(vhost))
        for conn in list(self.broker.connections):
            if conn.vhost == vhost:
                conn.force_close(f"vhost '{vhost}' is deleted")
                conn.flush_soon()
        return _no_content()

    async def vhost_permissions(self, request: web.Request) -> web.Response:
        vhost = self._vhost(request)
        return json_response([p for p in self._perm_list() if p["vhost"] == vhost])

    # -- users --------------------------------------------------------------------------------

    def _user_json(self, user: Any) -> dict[str, Any]:
        return {
            "name": user.name,
            "password_hash": user.password_hash,
            "hashing_algorithm": "rabbit_password_hashing_sha256",
            "tags": list(user.tags),
            "limits": {},
        }

    async def users(self, request: web.Request) -> web.Response:
        self._admin(request)
        return json_response(
            [self._user_json(self.state.users[n]) for n in sorted(self.state.users)]
        )

    async def users_without_permissions(self, request: web.Request) -> web.Response:
        self._admin(request)
        with_perm = {u for u, _ in self.state.permissions}
        return json_response(
            [self._user_json(u) for n, u in sorted(self.state.users.items()) if n not in with_perm]
        )

    def _user(self, request: web.Request) -> Any:
        self._admin(request)
        name = request.match_info["user"]
        user = self.state.users.get(name)
        if user is None:
            raise not_found(f"no user '{name}'")
        return user

    async def user(self, request: web.Request) -> web.Response:
        return json_response(self._user_json(self._user(request)))

    async def user_put(self, request: web.Request) -> web.Response:
        self._admin(request)
        name = request.match_info["user"]
        body = await read_json(request)
        existing = self.state.users.get(name)
        if "password" in body:
            pw_hash = hash_password(str(body["password"]))
        elif "password_hash" in body:
            algo = body.get("hashing_algorithm", "rabbit_password_hashing_sha256")
            if algo != "rabbit_password_hashing_sha256":
                raise bad_request(f"unsupported hashing_algorithm '{algo}' (only SHA-256)")
            pw_hash = str(body["password_hash"])
        elif existing is not None:
            pw_hash = existing.password_hash
        else:
            raise bad_request("password or password_hash is required")
        if "tags" not in body and existing is None:
            raise bad_request("tags is required")
        tags = _tags(body["tags"]) if "tags" in body else existing.tags
        await self._propose(cmds.PutUser(name, pw_hash, tags))
        return web.Response(status=204 if existing is not None else 201)

    async def user_delete(self, request: web.Request) -> web.Response:
        user = self._user(request)
        await self._propose(cmds.DeleteUser(user.name))
        for conn in list(self.broker.connections):
            if conn.user == user.name:
                conn.force_close(f"user '{user.name}' is deleted")
                conn.flush_soon()
        return _no_content()

    async def user_permissions(self, request: web.Request) -> web.Response:
        user = self._user(request)
        return json_response([p for p in self._perm_list() if p["user"] == user.name])

    # -- permissions --------------------------------------------------------------------------

    def _perm_list(self) -> list[dict[str, Any]]:
        return [
            {"user": u, "vhost": v, "configure": p.configure, "write": p.write, "read": p.read}
            for (u, v), p in sorted(self.state.permissions.items())
        ]

    async def permissions(self, request: web.Request) -> web.Response:
        self._admin(request)
        return json_response(self._perm_list())

    async def permission(self, request: web.Request) -> web.Response:
        self._admin(request)
        vhost, user = request.match_info["vhost"], request.match_info["user"]
        for p in self._perm_list():
            if p["vhost"] == vhost and p["user"] == user:
                return json_response(p)
        raise not_found(f"no permissions for user '{user}' in vhost '{vhost}'")

    async def permission_put(self, request: web.Request) -> web.Response:
        self._admin(request)
        vhost, user = request.match_info["vhost"], request.match_info["user"]
        if vhost not in self.state.vhosts:
            raise bad_request(f"no vhost '{vhost}'")
        if user not in self.state.users:
            raise bad_request(f"no user '{user}'")
        body = await read_json(request)
        for key in ("configure", "write", "read"):
            if key not in body:
                raise bad_request(f"{key} is required")
        existed = (user, vhost) in self.state.permissions
        await self._propose(
            cmds.SetPermissions(
                user, vhost, str(body["configure"]), str(body["write"]), str(body["read"])
            )
        )
        return web.Response(status=204 if existed else 201)

    async def permission_delete(self, request: web.Request) -> web.Response:
        self._admin(request)
        vhost, user = request.match_info["vhost"], request.match_info["user"]
        if (user, vhost) not in self.state.permissions:
            raise not_found(f"no permissions for user '{user}' in vhost '{vhost}'")
        await self._propose(cmds.ClearPermissions(user, vhost))
        return _no_content()

    # -- policies -----------------------------------------------------------------------------

    def _policy_json(self, vhost: str, p: Any) -> dict[str, Any]:
        return {
            "vhost": vhost,
            "name": p.name,
            "pattern": p.pattern,
            "apply-to": p.apply_to,
            "definition": jsonable(p.definition),
            "priority": p.priority,
        }

    async def policies(self, request: web.Request) -> web.Response:
        out = []
        for vhost in self._visible_vhosts(request):
            pols = self.state.vhosts[vhost].policies
            out += [self._policy_json(vhost, pols[n]) for n in sorted(pols)]
        return json_response(out)

    def _policy_writer(self, request: web.Request) -> str:
        vhost = self._vhost(request)
        who = caller(request)
        if not (who.is_admin or "policymaker" in who.tags):
            raise not_authorised("Not policymaker user")
        return vhost

    async def policy(self, request: web.Request) -> web.Response:
        vhost = self._vhost(request)
        name = request.match_info["name"]
        p = self.state.vhosts[vhost].policies.get(name)
        if p is None:
            raise not_found(f"no policy '{name}' in vhost '{vhost}'")
        return json_response(self._policy_json(vhost, p))

    async def policy_put(self, request: web.Request) -> web.Response:
        vhost = self._policy_writer(request)
        name = request.match_info["name"]
        body = await read_json(request)
        if "pattern" not in body or "definition" not in body:
            raise bad_request("pattern and definition are required")
        if not isinstance(body["definition"], dict):
            raise bad_request("definition must be an object")
        try:
            priority = int(body.get("priority", 0))
        except (TypeError, ValueError):
            raise bad_request("priority must be an integer")
        existed = name in self.state.vhosts[vhost].policies
        await self._propose(
            cmds.SetPolicy(
                vhost,
                name,
                str(body["pattern"]),
                dict(body["definition"]),
                priority,
                str(body.get("apply-to", "all")),
            )
        )
        return web.Response(status=204 if existed else 201)

    async def policy_delete(self, request: web.Request) -> web.Response:
        vhost = self._policy_writer(request)
        await self._propose(cmds.ClearPolicy(vhost, request.match_info["name"]))
        return _no_content()

    # -- definitions --------------------------------------------------------------------------

    async def definitions_get(self, request: web.Request) -> web.Response:
        self._admin(request)
        vhost = self._vhost(request) if "vhost" in request.match_info else None
        data = definitions.export(self.node, vhost)
        resp = json_response(data)
        if _flag(request, "download") or request.query.get("download"):
            resp.headers["Content-Disposition"] = (
                f'attachment; filename="{request.query.get("download")}"'
            )
        return resp

    async def definitions_post(self, request: web.Request) -> web.Response:
        self._admin(request)
        vhost = self._vhost(request) if "vhost" in request.match_info else None
        body = await read_json(request)
        await definitions.import_(self.node, body, vhost, self._propose)
        return _no_content()

    # -- health checks ------------------------------------------------------------------------

    async def health_alarms(self, request: web.Request) -> web.Response:
        if self.broker.blocked:
            return json_response(
                {
                    "status": "failed",
                    "reason": "resource alarm(s) in effect in the cluster",
                    "alarms": [{"node": self.node.node_id, "resource": "memory"}],
                },
                503,
            )
        return json_response({"status": "ok"})

    async def health_quorum_critical(self, request: web.Request) -> web.Response:
        """Critical: stopping this node would leave the metadata (Raft) without a majority.
        Queues are not replicated yet, so the metadata is the only quorum there is; a single
        node has none to lose, and RabbitMQ answers ok there too."""
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


def _with_kind(handler: Any, dkind: str) -> Any:
    async def bound(request: web.Request) -> web.StreamResponse:
        return await handler(request, dkind)

    return bound


@contextmanager
def _declare_refused() -> Iterator[None]:
    """A refused declaration as RabbitMQ's API answers it: 403 for a reserved name, else 400,
    with the text a channel would close with."""
    try:
        yield
    except DeclareError as e:
        if e.code == ACCESS_REFUSED:
            raise ApiError(403, "access_refused", e.text)
        raise bad_request(e.text)
