"""How the management API shows the node's objects: RabbitMQ's JSON shapes, built from live state."""

from __future__ import annotations

import base64
import datetime
import decimal
import hashlib
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from ..wire.properties import decode_properties
from ..wire.table import Timestamp

if TYPE_CHECKING:
    from ..server import Node


def jsonable(value: Any) -> Any:
    """AMQP table values (bytes, decimals, timestamps) as JSON values."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return base64.b64encode(value).decode("ascii")
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, datetime.datetime):
        return int(value.timestamp())
    if isinstance(value, Timestamp):
        return int(getattr(value, "value", 0) or 0)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


# -- queues -----------------------------------------------------------------------------------


def live_nodes(node: Node) -> set[str]:
    cluster = getattr(node, "cluster", None)
    return cluster.membership.live() if cluster is not None else {node.node_id}


async def queue_figures(q: Any) -> tuple[int, int, int]:
    """(ready, unacked, consumers) of a queue handle, as its leader answers."""
    if q is None:
        return 0, 0, 0
    try:
        stats = await q.stats()
    except Exception:  # its node is down or unreachable: listed, with no figures
        return 0, 0, 0
    return stats[0], q.unacked, stats[1]


async def queue_json(node: Node, vhost: str, qdef: Any) -> dict[str, Any]:
    broker = node.broker
    q = broker.queue(vhost, qdef.name)
    ready, unacked, consumers = await queue_figures(q)
    vh = broker.state.vhosts.get(vhost)
    policy = vh.policy_for("queue", qdef.name) if vh is not None else None
    args = qdef.arguments or {}
    exclusive_tag = None
    if q is not None:
        for c in q.consumers:
            if c.exclusive:
                exclusive_tag = c.tag
    return {
        "name": qdef.name,
        "vhost": vhost,
        "durable": qdef.durable,
        "auto_delete": qdef.auto_delete,
        "exclusive": qdef.exclusive_owner is not None,
        "owner_pid_details": {"name": qdef.exclusive_owner} if qdef.exclusive_owner else None,
        "arguments": jsonable(args),
        "node": qdef.leader,
        "leader": qdef.leader,
        # RabbitMQ's fields for a quorum queue: its replicas, and those reachable from here.
        "members": list(qdef.replicas) or [qdef.leader],
        "online": [m for m in (qdef.replicas or (qdef.leader,)) if m in live_nodes(node)],
        # Merpati's: the leader's epoch, and this node's replica (the leader's shows each
        # follower's lag).
        "epoch": qdef.epoch,
        "replica": broker.cluster.replica_status(vhost, qdef.name),
        # Former leaders still handing their messages over after a move (drain, rebalance).
        "handing_over": list(qdef.handing_over),
        "state": "running",
        "type": jsonable(args.get("x-queue-type", "classic")),
        "messages": ready + unacked,
        "messages_ready": ready,
        "messages_unacknowledged": unacked,
        "consumers": consumers,
        "consumer_capacity": 1.0 if consumers else 0,
        "consumer_utilisation": 1.0 if consumers else None,
        "exclusive_consumer_tag": exclusive_tag,
        "policy": policy.name if policy is not None else None,
        "effective_policy_definition": jsonable(policy.definition) if policy is not None else {},
        "operator_policy": None,
    }


# -- exchanges --------------------------------------------------------------------------------


def exchange_json(node: Node, vhost: str, ex: Any) -> dict[str, Any]:
    vh = node.broker.state.vhosts.get(vhost)
    policy = vh.policy_for("exchange", ex.name) if vh is not None else None
    return {
        "name": ex.name,
        "vhost": vhost,
        "type": ex.type,
        "durable": ex.durable,
        "auto_delete": ex.auto_delete,
        "internal": ex.internal,
        "arguments": jsonable(ex.arguments or {}),
        "user_who_performed_action": "",
        "policy": policy.name if policy is not None else None,
    }


# -- bindings ---------------------------------------------------------------------------------


def props_key(routing_key: str, arguments: dict[str, Any] | None) -> str:
    """RabbitMQ's `properties_key`: the routing key, plus a hash of the arguments when any."""
    if not arguments:
        return quote(routing_key, safe="") if routing_key else "~"
    digest = hashlib.sha1(repr(sorted(jsonable(arguments).items())).encode()).digest()
    return (
        (quote(routing_key, safe="") or "") + "~" + base64.urlsafe_b64encode(digest[:12]).decode()
    )


def binding_json(vhost: str, b: Any) -> dict[str, Any]:
    kind, dest = b.destination
    return {
        "source": b.source,
        "vhost": vhost,
        "destination": dest,
        "destination_type": "queue" if kind == "q" else "exchange",
        "routing_key": b.routing_key,
        "arguments": jsonable(b.arguments or {}),
        "properties_key": props_key(b.routing_key, b.arguments),
    }


def vhost_bindings(node: Node, vhost: str) -> list[dict[str, Any]]:
    """Every binding of a vhost, the default exchange's implicit ones first (as RabbitMQ lists)."""
    vh = node.broker.state.vhosts.get(vhost)
    if vh is None:
        return []
    out = [
        {
            "source": "",
            "vhost": vhost,
            "destination": name,
            "destination_type": "queue",
            "routing_key": name,
            "arguments": {},
            "properties_key": quote(name, safe=""),
        }
        for name in sorted(vh.queues)
    ]
    for ex_name in sorted(vh.exchanges):
        ex = vh.exchanges[ex_name]
        for b in ex.bindings.values():
            out.append(binding_json(vhost, b))
    return out


# -- connections, channels, consumers ---------------------------------------------------------


def _addr(value: Any) -> tuple[str, int]:
    if isinstance(value, tuple) and len(value) >= 2:
        return str(value[0]), int(value[1])
    return str(value or ""), 0


def connection_name(conn: Any) -> str:
    peer_host, peer_port = _addr(conn.peer)
    host, port = _addr(_sockname(conn))
    return f"{peer_host}:{peer_port} -> {host}:{port}"


def _sockname(conn: Any) -> Any:
    transport = getattr(conn.shell, "transport", None)
    if transport is None:
        return None
    return transport.get_extra_info("sockname")


def open_channels(conn: Any) -> list[Any]:
    """A 0-9-1 connection's open channels ([] for AMQP 1.0, whose sessions are not channels)."""
    channels = getattr(conn, "channels", None)
    if channels is None:
        return []
    return [ch for _, ch in sorted(channels.items()) if ch.is_open]


def channel_count(conn: Any) -> int:
    """Channels as RabbitMQ counts them: 0-9-1 channels, AMQP 1.0 sessions."""
    sessions = getattr(conn, "sessions", None)
    if sessions is not None and not hasattr(conn, "channels"):
        return len(sessions)
    return len(open_channels(conn))


def _connection_state(conn: Any, amqp10: bool) -> str:
    """RabbitMQ's: "blocking" while a resource alarm stands and the connection has not published
    since, "blocked" once it did (its publish waits); a 1.0 connection is "blocked" while its
    credit is withheld."""
    if not conn.blocked:
        return "running"
    if amqp10 or getattr(conn, "held_publish", None) is not None:
        return "blocked"
    return "blocking"


def connection_json(node: Node, conn: Any) -> dict[str, Any]:
    peer_host, peer_port = _addr(conn.peer)
    host, port = _addr(_sockname(conn))
    amqp10 = getattr(conn, "protocol", "") == "amqp10"
    props = getattr(conn, "client_properties", None) or {}
    if amqp10:
        props = {"container_id": getattr(conn, "container_id", "")}
    return {
        "name": connection_name(conn),
        "node": node.node_id,
        "vhost": conn.vhost,
        "user": conn.user,
        "user_who_performed_action": conn.user,
        "state": _connection_state(conn, amqp10),
        "channels": channel_count(conn),
        "channel_max": conn.channel_max,
        "frame_max": getattr(conn, "frame_max", getattr(conn, "max_frame", 0)),
        "timeout": conn.heartbeat,
        "peer_host": peer_host,
        "peer_port": peer_port,
        "host": host,
        "port": port,
        "protocol": "AMQP 1-0" if amqp10 else "AMQP 0-9-1",
        "type": "network",
        "ssl": False,
        "auth_mechanism": "PLAIN",
        "client_properties": jsonable(props),
        "connected_at": int(getattr(conn, "opened_at", 0.0) * 1000),
        "merpati_id": conn.id,
    }


def channel_json(node: Node, conn: Any, ch: Any) -> dict[str, Any]:
    cname = connection_name(conn)
    peer_host, peer_port = _addr(conn.peer)
    return {
        "name": f"{cname} ({ch.number})",
        "node": node.node_id,
        "number": ch.number,
        "user": conn.user,
        "vhost": conn.vhost,
        "connection_details": {"name": cname, "peer_host": peer_host, "peer_port": peer_port},
        "consumer_count": len(ch.consumers),
        "messages_unacknowledged": len(ch.unacked),
        "messages_unconfirmed": len(ch.pending),
        "messages_uncommitted": len(ch.tx) if ch.tx else 0,
        "acks_uncommitted": 0,
        "prefetch_count": ch.consumer_prefetch,
        "global_prefetch_count": ch.global_prefetch,
        "confirm": ch.confirm,
        "transactional": ch.tx is not None,
        "state": "running" if ch.active else "flow",
    }


def consumer_json(node: Node, conn: Any, ch: Any, c: Any) -> dict[str, Any]:
    chj = channel_json(node, conn, ch)
    return {
        "consumer_tag": c.tag,
        "queue": {"name": c.queue.name, "vhost": c.queue.vhost},
        "channel_details": {
            "name": chj["name"],
            "number": ch.number,
            "connection_name": chj["connection_details"]["name"],
            "peer_host": chj["connection_details"]["peer_host"],
            "peer_port": chj["connection_details"]["peer_port"],
            "user": conn.user,
            "node": node.node_id,
        },
        "ack_required": not c.no_ack,
        "exclusive": c.exclusive,
        "prefetch_count": c.prefetch,
        "arguments": jsonable(c.arguments or {}),
        "active": True,
        "activity_status": "up",
    }


# -- this node's clients, for the other nodes -------------------------------------------------

CLIENT_VIEW_KINDS = ("connections", "channels", "consumers")


class ClientViews:
    """This node's client connections, channels and consumers as its API shows them, and the
    closing of one of its connections: what another node's management API asks for (the
    forwarding ClientViews and CloseConnection calls) to answer for the whole cluster. Unfiltered:
    the asking node applies its caller's rights."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def _conns(self) -> list[Any]:
        assert self.node.broker is not None
        return sorted(self.node.broker.connections, key=lambda c: c.id)

    def list(self, kind: str) -> list[dict[str, Any]]:
        node = self.node
        if kind == "connections":
            return [connection_json(node, c) for c in self._conns()]
        if kind == "channels":
            return [channel_json(node, c, ch) for c in self._conns() for ch in open_channels(c)]
        if kind == "consumers":
            return [
                consumer_json(node, c, ch, cons)
                for c in self._conns()
                for ch in open_channels(c)
                for cons in ch.consumers.values()
            ]
        raise ValueError(f"unknown kind {kind!r} (known: {', '.join(CLIENT_VIEW_KINDS)})")

    def close(self, name: str, reason: str) -> bool:
        """Close this node's connection `name` (its API name or id); False: there is none."""
        for conn in self._conns():
            if connection_name(conn) == name or conn.id == name:
                conn.force_close(reason)
                conn.flush_soon()
                return True
        return False


def client_view_owner(kind: str, item: dict[str, Any]) -> tuple[str, str]:
    """(vhost, user) of a connection, channel or consumer view, for the caller's rights."""
    if kind == "consumers":
        return item["queue"]["vhost"], item["channel_details"]["user"]
    return item["vhost"], item["user"]


# -- messages (queue /get) --------------------------------------------------------------------


def message_json(msg: Any, remaining: int, encoding: str, truncate: int | None) -> dict[str, Any]:
    body = msg.body
    try:
        props = decode_properties(msg.props_raw) if msg.props_raw else {}
    except Exception:
        props = {}
    payload: str
    enc = "string"
    if encoding == "base64":
        payload, enc = base64.b64encode(body).decode("ascii"), "base64"
    else:
        try:
            payload = body.decode("utf-8")
        except UnicodeDecodeError:
            payload, enc = base64.b64encode(body).decode("ascii"), "base64"
    if truncate is not None:
        payload = payload[:truncate]
    return {
        "payload_bytes": len(body),
        "redelivered": bool(msg.redelivered),
        "exchange": msg.exchange,
        "routing_key": msg.routing_key,
        "message_count": remaining,
        "properties": jsonable(props),
        "payload": payload,
        "payload_encoding": enc,
    }
