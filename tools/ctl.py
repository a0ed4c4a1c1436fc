"""`merpati ctl`: rabbitmqctl's everyday commands, talking to a node over its management API.

Connection: `--host`, `--port` (15672), `--user`, `--password`, `--scheme`, or the environment
variables MERPATI_CTL_HOST, MERPATI_CTL_PORT, MERPATI_CTL_USER, MERPATI_CTL_PASSWORD.

Listing commands take the columns to show as rabbitmqctl does (`list_queues name messages
consumers`) and print a header and tab-separated rows; `--formatter json` prints JSON instead and
`-q` drops the "Listing ..." line. Command names take underscores or dashes (list_queues,
list-queues). Exit codes follow rabbitmqctl: 0 ok, 1 failed, 64 usage, 69 node unreachable,
77 not authorised.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import ssl
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

EX_USAGE, EX_UNAVAILABLE, EX_NOPERM = 64, 69, 77


class CtlError(Exception):
    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


class Client:
    """The management API over urllib: no dependencies beyond the standard library."""

    def __init__(
        self,
        base: str,
        user: str,
        password: str,
        timeout: float = 30.0,
        cacert: str | None = None,
    ) -> None:
        self.base = base.rstrip("/")
        self.auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self.timeout = timeout
        # https: verified against `cacert` (the node's CA), else the system's CAs.
        self.context = ssl.create_default_context(cafile=cacert) if cacert else None

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Authorization", self.auth)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout, context=self.context) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                reason = json.loads(raw).get("reason", raw.decode(errors="replace"))
            except (ValueError, AttributeError):
                reason = raw.decode(errors="replace")
            code = EX_NOPERM if e.code == 401 else 1
            raise CtlError(f"{method} {path}: {e.code} {reason}", code) from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise CtlError(f"cannot reach the node at {self.base}: {reason}", EX_UNAVAILABLE)
        return json.loads(raw) if raw.strip() else None

    def get(self, path: str) -> Any:
        return self.call("GET", path)


def v(name: str) -> str:
    return quote(name, safe="")


# -- output -------------------------------------------------------------------------------------


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _dig(row: dict[str, Any], key: str) -> Any:
    for part in key.split("."):
        if not isinstance(row, dict):
            return None
        row = row.get(part)  # type: ignore[assignment]
    return row


def print_table(
    rows: list[dict[str, Any]],
    columns: list[str],
    aliases: dict[str, str],
    args: argparse.Namespace,
    banner: str,
) -> None:
    keys = [aliases.get(c, c) for c in columns]
    if args.formatter == "json":
        out = [{c: _dig(r, k) for c, k in zip(columns, keys, strict=True)} for r in rows]
        print(json.dumps(out, indent=2))
        return
    if not args.quiet:
        print(banner)
    print("\t".join(columns))
    for r in rows:
        print("\t".join(_cell(_dig(r, k)) for k in keys))


# -- commands -----------------------------------------------------------------------------------

Handler = Callable[[Client, argparse.Namespace], int]
COMMANDS: dict[str, tuple[Handler, Callable[[argparse.ArgumentParser], None], str]] = {}


def command(
    name: str, help_text: str, setup: Callable[[argparse.ArgumentParser], None] | None = None
):
    def deco(fn: Handler) -> Handler:
        COMMANDS[name] = (fn, setup or (lambda p: None), help_text)
        return fn

    return deco


def _vhost_opt(p: argparse.ArgumentParser) -> None:
    p.add_argument("-p", "--vhost", default="/", help="virtual host (default /)")


def _columns(default: list[str]) -> Callable[[argparse.ArgumentParser], None]:
    def setup(p: argparse.ArgumentParser) -> None:
        _vhost_opt(p)
        p.add_argument("columns", nargs="*", help=f"columns to show (default: {' '.join(default)})")
        p.set_defaults(default_columns=default)

    return setup


def _cols(args: argparse.Namespace) -> list[str]:
    cols = []
    for c in args.columns or args.default_columns:
        cols += [x for x in c.split(",") if x]
    return cols


def _alarms(nodes: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Every resource alarm in the cluster as the node asked knows them: its own, and the
    others' from their last answers (/api/nodes; the first entry is the node asked)."""
    out = []
    for n in nodes:
        if n.get("mem_alarm"):
            out.append({"node": n["name"], "resource": "memory"})
        if n.get("disk_free_alarm"):
            out.append({"node": n["name"], "resource": "disk"})
    return out


_ALARM_TEXT = {"memory": "Memory alarm on node {}", "disk": "Free disk space alarm on node {}"}


def _print_alarms(alarms: list[dict[str, str]]) -> None:
    print("Alarms:" + ("" if alarms else " (none)"))
    for a in alarms:
        print("  " + _ALARM_TEXT[a["resource"]].format(a["node"]))


@command("status", "show the node's status")
def cmd_status(c: Client, args: argparse.Namespace) -> int:
    ov = c.get("/api/overview")
    nodes = c.get("/api/nodes")
    node = nodes[0] if nodes else {}
    alarms = _alarms(nodes)
    if args.formatter == "json":
        print(json.dumps({"overview": ov, "node": node, "alarms": alarms}, indent=2))
        return 0
    print(f"Status of node {ov['node']} ...")
    print(f"Product: {ov['product_name']} {ov['product_version']}")
    print(f"Cluster name: {ov['cluster_name']}")
    print(f"Uptime (seconds): {node.get('uptime', 0) // 1000}")
    print(f"Memory used: {node.get('mem_used', 0)} bytes (limit {node.get('mem_limit', 0)})")
    print(f"Memory alarm: {_cell(node.get('mem_alarm', False))}")
    print(f"Disk free: {node.get('disk_free', 0)} bytes (limit {node.get('disk_free_limit', 0)})")
    print(f"Disk alarm: {_cell(node.get('disk_free_alarm', False))}")
    print(f"File descriptors: {node.get('fd_used', 0)} used of {node.get('fd_total', 0)}")
    print("Listeners:")
    for lst in ov.get("listeners", []):
        print(f"  {lst['protocol']}: {lst['ip_address']}:{lst['port']}")
    tot = ov.get("object_totals", {})
    qt = ov.get("queue_totals", {})
    print(
        "Totals: "
        + ", ".join(
            f"{k} {tot.get(k, 0)}"
            for k in ("connections", "channels", "consumers", "queues", "exchanges")
        )
    )
    print(
        f"Messages: {qt.get('messages', 0)} ({qt.get('messages_ready', 0)} ready, "
        f"{qt.get('messages_unacknowledged', 0)} unacknowledged)"
    )
    raft = node.get("raft") or {}
    if raft:
        print(
            f"Metadata (Raft): leader {raft.get('leader')}, term {raft.get('raft_term')}, commit index {raft.get('commit_idx')}"
        )
    # Alarms are cluster-wide: one on any node blocks publishers on every node.
    _print_alarms(alarms)
    return 0


@command("cluster_status", "show the cluster's members, the Raft leader and queue leaders per node")
def cmd_cluster_status(c: Client, args: argparse.Namespace) -> int:
    nodes = c.get("/api/nodes")
    name = c.get("/api/cluster-name")["name"]
    cluster = c.get("/api/overview").get("merpati_cluster") or {}
    if args.formatter == "json":
        print(json.dumps({"cluster_name": name, "nodes": nodes} | cluster, indent=2))
        return 0
    print(f"Cluster status of node {nodes[0]['name'] if nodes else '?'} ...")
    print(f"Cluster name: {name}")
    print("Disk Nodes:")
    for n in nodes:
        print(f"  {n['name']}")
    print("Running Nodes:")
    for n in nodes:
        if n.get("running"):
            print(f"  {n['name']}")
    if cluster.get("raft_leader") is not None:
        print(f"Metadata (Raft) leader: {cluster['raft_leader']} (term {cluster.get('raft_term')})")
    if cluster.get("draining"):
        print("Draining Nodes (no new queues):")
        for node in cluster["draining"]:
            print(f"  {node}")
    if cluster.get("queue_leaders"):
        print("Queue leaders per node:")
        for node, count in sorted(cluster["queue_leaders"].items()):
            print(f"  {node}: {count}")
    _print_alarms(_alarms(nodes))
    return 0


def _disk_limit_setup(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "limit",
        nargs="+",
        help="bytes, with units as RabbitMQ's (2000000000, 50MB, 2GB, 1GiB), or "
        "mem_relative FRACTION (a multiple of the node's RAM)",
    )


@command(
    "set_disk_free_limit",
    "set the node's free disk space limit until it restarts (rabbitmqctl's)",
    _disk_limit_setup,
)
def cmd_set_disk_free_limit(c: Client, args: argparse.Namespace) -> int:
    words = args.limit
    if len(words) == 2 and words[0] == "mem_relative":
        limit = f"mem_relative:{words[1]}"
    elif len(words) == 1:
        limit = words[0]
    else:
        raise CtlError("usage: set_disk_free_limit LIMIT | mem_relative FRACTION", EX_USAGE)
    got = c.call("PUT", "/api/merpati/node/disk-free-limit", {"limit": limit})
    if args.formatter == "json":
        print(json.dumps(got, indent=2))
    elif not args.quiet:
        print(
            f"Disk free limit of node {got['node']} set to {got['disk_free_limit']} bytes "
            f"({got['setting']}); {got['disk_free']} bytes free, alarm "
            f"{_cell(got['disk_free_alarm'])}"
        )
    return 0


def _watermark_setup(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "limit",
        nargs="+",
        help="a fraction of the node's RAM (0.4), or absolute BYTES with units as RabbitMQ's "
        "(2000000000, 2GB, 1GiB)",
    )


@command(
    "set_vm_memory_high_watermark",
    "set the node's memory high watermark until it restarts (rabbitmqctl's)",
    _watermark_setup,
)
def cmd_set_vm_memory_high_watermark(c: Client, args: argparse.Namespace) -> int:
    words = args.limit
    if len(words) == 2 and words[0] == "absolute":
        body: dict[str, Any] = {"limit": words[1], "absolute": True}
    elif len(words) == 1:
        body = {"limit": words[0]}
    else:
        raise CtlError("usage: set_vm_memory_high_watermark FRACTION | absolute BYTES", EX_USAGE)
    got = c.call("PUT", "/api/merpati/node/memory-high-watermark", body)
    if args.formatter == "json":
        print(json.dumps(got, indent=2))
    elif not args.quiet:
        print(
            f"Memory high watermark of node {got['node']} set to {got['mem_limit']} bytes "
            f"({got['setting']}); {got['mem_used']} bytes in use, alarm "
            f"{_cell(got['mem_alarm'])}"
        )
    return 0


@command(
    "add_node",
    "add a node to the cluster (start it with --peers naming the members and itself)",
    lambda p: (p.add_argument("node"), p.add_argument("address", help="host:cluster-port")),
)
def cmd_add_node(c: Client, args: argparse.Namespace) -> int:
    c.call("POST", "/api/merpati/cluster/nodes", {"node": args.node, "address": args.address})
    if not args.quiet:
        print(f"Node {args.node} ({args.address}) added to the cluster")
    return 0


@command("remove_node", "remove a node from the cluster", lambda p: p.add_argument("node"))
def cmd_remove_node(c: Client, args: argparse.Namespace) -> int:
    c.call("DELETE", f"/api/merpati/cluster/nodes/{v(args.node)}")
    if not args.quiet:
        print(f"Node {args.node} removed from the cluster")
    return 0


@command("rebalance", "move leaders of idle queues to even the spread over the nodes")
def cmd_rebalance(c: Client, args: argparse.Namespace) -> int:
    moves = c.call("POST", "/api/merpati/cluster/rebalance", {})["moves"]
    if args.formatter == "json":
        print(json.dumps(moves, indent=2))
        return 0
    for m in moves:
        print(f"{m['vhost']}\t{m['queue']}\t{m['from']} -> {m['to']}")
    if not args.quiet:
        print(f"{len(moves)} queue leader(s) moved")
    return 0


def _drain_setup(p: argparse.ArgumentParser) -> None:
    p.add_argument("--node", help="the node to drain (default: the node ctl talks to)")
    p.add_argument(
        "--wait",
        type=float,
        default=60.0,
        help="seconds to wait for the queues' messages to be handed over (default 60)",
    )


def _this_node(c: Client) -> str:
    return str(c.get("/api/overview")["node"])


@command(
    "drain_node",
    "give a node no new queues and move the queues it leads, with their messages, to the "
    "other nodes (before stopping or removing it)",
    _drain_setup,
)
def cmd_drain_node(c: Client, args: argparse.Namespace) -> int:
    node = args.node or _this_node(c)
    c.timeout = max(c.timeout, args.wait + 30)  # the node answers when the wait is over
    if args.formatter != "json":
        _say(args, f"Draining node {node} ...")
    report = c.call("POST", f"/api/merpati/cluster/nodes/{v(node)}/drain", {"timeout": args.wait})
    if args.formatter == "json":
        print(json.dumps(report, indent=2))
        return 0 if report["complete"] else 1
    for m in report["moved"]:
        print(f"moved\t{m['vhost']}\t{m['queue']}\t-> {m['to']}")
    for m in report["pending"]:
        left = ""
        if "remaining" in m:
            left = f"\t{m['remaining']} message(s) left, {m['unacked']} unacknowledged"
            if m.get("error"):
                left += f" ({m['error']})"
        print(f"pending\t{m['vhost']}\t{m['queue']}\t-> {m['to']}{left}")
    for m in report["not_moved"]:
        print(f"kept\t{m['vhost']}\t{m['queue']}\t{m['reason']}")
    if report.get("note"):
        print(f"Note: {report['note']}")
    _say(
        args,
        f"Node {node} is draining: {len(report['moved'])} queue(s) moved, "
        f"{len(report['pending'])} still handing over, {len(report['not_moved'])} not moved"
        + ("" if report["complete"] else f" after {args.wait:g} s"),
    )
    return 0 if report["complete"] else 1


@command(
    "undrain_node",
    "let a drained node take new queues again (it also does when it starts again)",
    lambda p: p.add_argument("--node", help="default: the node ctl talks to"),
)
def cmd_undrain_node(c: Client, args: argparse.Namespace) -> int:
    node = args.node or _this_node(c)
    c.call("POST", f"/api/merpati/cluster/nodes/{v(node)}/undrain", {})
    _say(args, f"Node {node} takes new queues again")
    return 0


QUEUE_ALIASES = {"messages_unacknowledged": "messages_unacknowledged", "leader": "node"}


@command("list_queues", "list queues", _columns(["name", "messages"]))
def cmd_list_queues(c: Client, args: argparse.Namespace) -> int:
    rows = c.get(f"/api/queues/{v(args.vhost)}")
    print_table(
        rows, _cols(args), QUEUE_ALIASES, args, f"Listing queues for vhost {args.vhost} ..."
    )
    return 0


@command("list_exchanges", "list exchanges", _columns(["name", "type"]))
def cmd_list_exchanges(c: Client, args: argparse.Namespace) -> int:
    rows = c.get(f"/api/exchanges/{v(args.vhost)}")
    print_table(rows, _cols(args), {}, args, f"Listing exchanges for vhost {args.vhost} ...")
    return 0


BINDING_ALIASES = {
    "source_name": "source",
    "destination_name": "destination",
    "destination_kind": "destination_type",
    "source_kind": "source_kind",
}


@command(
    "list_bindings",
    "list bindings",
    _columns(
        [
            "source_name",
            "source_kind",
            "destination_name",
            "destination_kind",
            "routing_key",
            "arguments",
        ]
    ),
)
def cmd_list_bindings(c: Client, args: argparse.Namespace) -> int:
    rows = c.get(f"/api/bindings/{v(args.vhost)}")
    for r in rows:
        r["source_kind"] = "exchange"
    print_table(
        rows, _cols(args), BINDING_ALIASES, args, f"Listing bindings for vhost {args.vhost}..."
    )
    return 0


@command(
    "list_connections", "list connections", _columns(["user", "peer_host", "peer_port", "state"])
)
def cmd_list_connections(c: Client, args: argparse.Namespace) -> int:
    rows = c.get("/api/connections")
    print_table(rows, _cols(args), {}, args, "Listing connections ...")
    return 0


@command(
    "list_channels",
    "list channels",
    _columns(["name", "user", "consumer_count", "messages_unacknowledged"]),
)
def cmd_list_channels(c: Client, args: argparse.Namespace) -> int:
    rows = c.get("/api/channels")
    print_table(rows, _cols(args), {}, args, "Listing channels ...")
    return 0


CONSUMER_ALIASES = {"queue_name": "queue.name", "channel_pid": "channel_details.name"}


@command(
    "list_consumers",
    "list consumers",
    _columns(
        [
            "queue_name",
            "channel_pid",
            "consumer_tag",
            "ack_required",
            "prefetch_count",
            "active",
            "arguments",
        ]
    ),
)
def cmd_list_consumers(c: Client, args: argparse.Namespace) -> int:
    rows = c.get(f"/api/consumers/{v(args.vhost)}")
    print_table(
        rows, _cols(args), CONSUMER_ALIASES, args, f"Listing consumers in vhost {args.vhost} ..."
    )
    return 0


@command("list_users", "list users", _columns(["user", "tags"]))
def cmd_list_users(c: Client, args: argparse.Namespace) -> int:
    rows = c.get("/api/users")
    print_table(rows, _cols(args), {"user": "name"}, args, "Listing users ...")
    return 0


@command("list_vhosts", "list virtual hosts", _columns(["name"]))
def cmd_list_vhosts(c: Client, args: argparse.Namespace) -> int:
    print_table(c.get("/api/vhosts"), _cols(args), {}, args, "Listing vhosts ...")
    return 0


@command(
    "list_permissions",
    "list permissions in a vhost",
    _columns(["user", "configure", "write", "read"]),
)
def cmd_list_permissions(c: Client, args: argparse.Namespace) -> int:
    rows = c.get(f"/api/vhosts/{v(args.vhost)}/permissions")
    print_table(rows, _cols(args), {}, args, f'Listing permissions for vhost "{args.vhost}" ...')
    return 0


@command(
    "list_policies",
    "list policies in a vhost",
    _columns(["vhost", "name", "pattern", "apply-to", "definition", "priority"]),
)
def cmd_list_policies(c: Client, args: argparse.Namespace) -> int:
    rows = c.get(f"/api/policies/{v(args.vhost)}")
    print_table(rows, _cols(args), {}, args, f'Listing policies for vhost "{args.vhost}" ...')
    return 0


def _user_setup(p: argparse.ArgumentParser) -> None:
    p.add_argument("username")
    p.add_argument("password")
    p.add_argument("--tags", default="", help="comma-separated tags (e.g. administrator)")


@command("add_user", "add a user", _user_setup)
def cmd_add_user(c: Client, args: argparse.Namespace) -> int:
    c.call("PUT", f"/api/users/{v(args.username)}", {"password": args.password, "tags": args.tags})
    _say(args, f'Adding user "{args.username}" ...')
    return 0


@command(
    "change_password",
    "change a user's password",
    lambda p: (p.add_argument("username"), p.add_argument("password")),
)
def cmd_change_password(c: Client, args: argparse.Namespace) -> int:
    c.call("PUT", f"/api/users/{v(args.username)}", {"password": args.password})
    _say(args, f'Changing password for user "{args.username}" ...')
    return 0


@command(
    "set_user_tags",
    "set a user's tags",
    lambda p: (p.add_argument("username"), p.add_argument("tags", nargs="*")),
)
def cmd_set_user_tags(c: Client, args: argparse.Namespace) -> int:
    c.call("PUT", f"/api/users/{v(args.username)}", {"tags": ",".join(args.tags)})
    _say(args, f'Setting tags for user "{args.username}" to [{", ".join(args.tags)}] ...')
    return 0


@command("delete_user", "delete a user", lambda p: p.add_argument("username"))
def cmd_delete_user(c: Client, args: argparse.Namespace) -> int:
    c.call("DELETE", f"/api/users/{v(args.username)}")
    _say(args, f'Deleting user "{args.username}" ...')
    return 0


def _perm_setup(p: argparse.ArgumentParser) -> None:
    _vhost_opt(p)
    for name in ("username", "conf", "write", "read"):
        p.add_argument(name)


@command("set_permissions", "set a user's permissions in a vhost", _perm_setup)
def cmd_set_permissions(c: Client, args: argparse.Namespace) -> int:
    c.call(
        "PUT",
        f"/api/permissions/{v(args.vhost)}/{v(args.username)}",
        {"configure": args.conf, "write": args.write, "read": args.read},
    )
    _say(args, f'Setting permissions for user "{args.username}" in vhost "{args.vhost}" ...')
    return 0


@command(
    "clear_permissions",
    "clear a user's permissions in a vhost",
    lambda p: (_vhost_opt(p), p.add_argument("username")),
)
def cmd_clear_permissions(c: Client, args: argparse.Namespace) -> int:
    c.call("DELETE", f"/api/permissions/{v(args.vhost)}/{v(args.username)}")
    _say(args, f'Clearing permissions for user "{args.username}" in vhost "{args.vhost}" ...')
    return 0


def _add_vhost_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("name")
    p.add_argument("--description")
    p.add_argument("--tags", help="comma-separated")
    p.add_argument(
        "--default-queue-type",
        choices=("classic", "quorum"),
        help="the type of queues declared in it without x-queue-type",
    )


@command("add_vhost", "add a virtual host", _add_vhost_args)
def cmd_add_vhost(c: Client, args: argparse.Namespace) -> int:
    body = {
        k: val
        for k, val in (
            ("description", args.description),
            ("tags", args.tags),
            ("default_queue_type", args.default_queue_type),
        )
        if val is not None
    }
    c.call("PUT", f"/api/vhosts/{v(args.name)}", body)
    _say(args, f'Adding vhost "{args.name}" ...')
    return 0


@command("delete_vhost", "delete a virtual host", lambda p: p.add_argument("name"))
def cmd_delete_vhost(c: Client, args: argparse.Namespace) -> int:
    c.call("DELETE", f"/api/vhosts/{v(args.name)}")
    _say(args, f'Deleting vhost "{args.name}" ...')
    return 0


def _definition(text: str) -> dict[str, Any]:
    """A JSON object given on the command line ('{"max-connections": 10}')."""
    try:
        definition = json.loads(text)
    except ValueError as e:
        raise CtlError(f"definition is not valid JSON: {e}", EX_USAGE)
    if not isinstance(definition, dict):
        raise CtlError("definition must be a JSON object", EX_USAGE)
    return definition


@command(
    "set_vhost_limits",
    "set a vhost's limits, replacing those it has (max-connections, max-queues; -1: none)",
    lambda p: (_vhost_opt(p), p.add_argument("definition", help="e.g. '{\"max-queues\": 100}'")),
)
def cmd_set_vhost_limits(c: Client, args: argparse.Namespace) -> int:
    definition = _definition(args.definition)
    c.call("PUT", f"/api/merpati/vhost-limits/{v(args.vhost)}", definition)
    _say(args, f'Setting vhost limits to "{args.definition}" for vhost "{args.vhost}" ...')
    return 0


@command("clear_vhost_limits", "clear a vhost's limits", _vhost_opt)
def cmd_clear_vhost_limits(c: Client, args: argparse.Namespace) -> int:
    c.call("DELETE", f"/api/merpati/vhost-limits/{v(args.vhost)}")
    _say(args, f'Clearing vhost "{args.vhost}" limits ...')
    return 0


def _list_vhost_limits_args(p: argparse.ArgumentParser) -> None:
    _vhost_opt(p)
    p.add_argument("--global", dest="all", action="store_true", help="every vhost's limits")


@command(
    "list_vhost_limits", "show a vhost's limits (--global: every vhost's)", _list_vhost_limits_args
)
def cmd_list_vhost_limits(c: Client, args: argparse.Namespace) -> int:
    if args.all:
        rows = c.get("/api/vhost-limits")
        banner = "Listing limits for all vhosts ..."
    else:
        rows = c.get(f"/api/vhost-limits/{v(args.vhost)}")
        banner = f'Listing limits for vhost "{args.vhost}" ...'
    print_table(rows, ["vhost", "limits"], {"limits": "value"}, args, banner)
    return 0


@command(
    "set_user_limits",
    "set a user's limits, merged into those it has (max-connections, max-channels; -1: none)",
    lambda p: (p.add_argument("username"), p.add_argument("definition")),
)
def cmd_set_user_limits(c: Client, args: argparse.Namespace) -> int:
    definition = _definition(args.definition)
    c.call("PUT", f"/api/merpati/user-limits/{v(args.username)}", definition)
    _say(args, f'Setting user limits to "{args.definition}" for user "{args.username}" ...')
    return 0


@command(
    "clear_user_limits",
    "clear one of a user's limits, or all of them ('all')",
    lambda p: (p.add_argument("username"), p.add_argument("limit", help="a limit's name, or all")),
)
def cmd_clear_user_limits(c: Client, args: argparse.Namespace) -> int:
    c.call("DELETE", f"/api/user-limits/{v(args.username)}/{v(args.limit)}")
    _say(args, f'Clearing "{args.limit}" limit for user "{args.username}" ...')
    return 0


def _list_user_limits_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--user", dest="username", help="one user's limits (default: every user's)")
    p.add_argument("--all", action="store_true", help="every user's limits (the default)")


@command("list_user_limits", "show users' limits", _list_user_limits_args)
def cmd_list_user_limits(c: Client, args: argparse.Namespace) -> int:
    if args.username and not args.all:
        rows = c.get(f"/api/user-limits/{v(args.username)}")
        banner = f'Listing limits for user "{args.username}" ...'
    else:
        rows = c.get("/api/user-limits")
        banner = "Listing limits for all users ..."
    print_table(rows, ["user", "limits"], {"limits": "value"}, args, banner)
    return 0


@command(
    "purge_queue",
    "remove every ready message from a queue",
    lambda p: (_vhost_opt(p), p.add_argument("queue")),
)
def cmd_purge_queue(c: Client, args: argparse.Namespace) -> int:
    c.call("DELETE", f"/api/queues/{v(args.vhost)}/{v(args.queue)}/contents")
    _say(args, f"Purging queue '{args.queue}' in vhost '{args.vhost}' ...")
    return 0


@command(
    "quorum_status",
    "a quorum queue's replicas: role, epoch, log end, what is durable, commit, lag",
    lambda p: (_vhost_opt(p), p.add_argument("queue")),
)
def cmd_quorum_status(c: Client, args: argparse.Namespace) -> int:
    st = c.get(f"/api/merpati/quorum/{v(args.vhost)}/{v(args.queue)}")
    banner = (
        f"Status of quorum queue '{args.queue}' in vhost '{args.vhost}': leader {st['leader']}, "
        f"epoch {st['epoch']}" + (f", electing epoch {st['electing']}" if st["electing"] else "")
    )
    cols = ["node", "role", "online", "epoch", "log_end", "durable", "commit", "applied", "lag"]
    print_table(st["members"], cols, {}, args, banner)
    return 0


def _grow_setup(p: argparse.ArgumentParser) -> None:
    p.add_argument("node")
    p.add_argument("which", nargs="?", choices=("all", "even"), default="all")


@command(
    "grow",
    "add a replica on NODE to every quorum queue (all, or those with an even count)",
    _grow_setup,
)
def cmd_grow(c: Client, args: argparse.Namespace) -> int:
    out = c.call("POST", "/api/merpati/quorum/grow", {"node": args.node, "which": args.which})
    rows = [{"vhost": g["vhost"], "name": g["queue"], "result": "grown"} for g in out["grown"]]
    print_table(
        rows, ["vhost", "name", "result"], {}, args, f"Growing quorum queues onto {args.node} ..."
    )
    return 0


@command("shrink", "remove NODE's replica of every quorum queue", lambda p: p.add_argument("node"))
def cmd_shrink(c: Client, args: argparse.Namespace) -> int:
    out = c.call("POST", "/api/merpati/quorum/shrink", {"node": args.node})
    rows = [{"vhost": r["vhost"], "name": r["queue"], "result": r["result"]} for r in out["queues"]]
    print_table(
        rows, ["vhost", "name", "result"], {}, args, f"Shrinking quorum queues on {args.node} ..."
    )
    return 1 if any(r["result"].startswith("kept") for r in rows) else 0


def _delete_queue_setup(p: argparse.ArgumentParser) -> None:
    _vhost_opt(p)
    p.add_argument("queue")
    p.add_argument("-u", "--if-unused", action="store_true")
    p.add_argument("-e", "--if-empty", action="store_true")


@command("delete_queue", "delete a queue", _delete_queue_setup)
def cmd_delete_queue(c: Client, args: argparse.Namespace) -> int:
    query = "&".join(
        q for q, on in (("if-unused=true", args.if_unused), ("if-empty=true", args.if_empty)) if on
    )
    c.call(
        "DELETE", f"/api/queues/{v(args.vhost)}/{v(args.queue)}" + (f"?{query}" if query else "")
    )
    _say(args, f"Deleting queue '{args.queue}' on vhost '{args.vhost}' ...")
    return 0


def _policy_setup(p: argparse.ArgumentParser) -> None:
    _vhost_opt(p)
    p.add_argument("name")
    p.add_argument("pattern")
    p.add_argument("definition", help="JSON object, e.g. '{\"max-length\": 1000}'")
    p.add_argument("--priority", type=int, default=0)
    p.add_argument("--apply-to", default="all", choices=("all", "queues", "exchanges"))


@command("set_policy", "set a policy", _policy_setup)
def cmd_set_policy(c: Client, args: argparse.Namespace) -> int:
    try:
        definition = json.loads(args.definition)
    except ValueError as e:
        raise CtlError(f"definition is not valid JSON: {e}", EX_USAGE)
    if not isinstance(definition, dict):
        raise CtlError("definition must be a JSON object", EX_USAGE)
    c.call(
        "PUT",
        f"/api/policies/{v(args.vhost)}/{v(args.name)}",
        {
            "pattern": args.pattern,
            "definition": definition,
            "priority": args.priority,
            "apply-to": args.apply_to,
        },
    )
    _say(
        args,
        f'Setting policy "{args.name}" for pattern "{args.pattern}" to "{args.definition}" with priority "{args.priority}" for vhost "{args.vhost}" ...',
    )
    return 0


@command("clear_policy", "clear a policy", lambda p: (_vhost_opt(p), p.add_argument("name")))
def cmd_clear_policy(c: Client, args: argparse.Namespace) -> int:
    c.call("DELETE", f"/api/policies/{v(args.vhost)}/{v(args.name)}")
    _say(args, f'Clearing policy "{args.name}" on vhost "{args.vhost}" ...')
    return 0


@command(
    "export_definitions",
    "write definitions to a file ('-' for stdout)",
    lambda p: p.add_argument("path"),
)
def cmd_export_definitions(c: Client, args: argparse.Namespace) -> int:
    data = json.dumps(c.get("/api/definitions"), indent=2)
    if args.path == "-":
        print(data)
    else:
        with open(args.path, "w") as f:
            f.write(data + "\n")
        _say(args, f"Exported definitions to {args.path}")
    return 0


@command(
    "import_definitions",
    "import definitions from a file ('-' for stdin)",
    lambda p: p.add_argument("path"),
)
def cmd_import_definitions(c: Client, args: argparse.Namespace) -> int:
    try:
        raw = sys.stdin.read() if args.path == "-" else open(args.path).read()  # noqa: SIM115
        body = json.loads(raw)
    except OSError as e:
        raise CtlError(f"cannot read {args.path}: {e.strerror}", EX_USAGE)
    except ValueError as e:
        raise CtlError(f"{args.path} is not valid JSON: {e}", EX_USAGE)
    c.call("POST", "/api/definitions", body)
    _say(args, f"Imported definitions from {args.path}")
    return 0


def _say(args: argparse.Namespace, text: str) -> None:
    if not args.quiet:
        print(text)


# -- entry point --------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    env = os.environ
    p = argparse.ArgumentParser(
        prog="merpati ctl", description="Operate a Merpati node over its management API."
    )
    p.add_argument("--host", default=env.get("MERPATI_CTL_HOST", "localhost"))
    p.add_argument("--port", type=int, default=int(env.get("MERPATI_CTL_PORT", "15672")))
    p.add_argument(
        "--scheme", default=env.get("MERPATI_CTL_SCHEME", "http"), choices=("http", "https")
    )
    p.add_argument(
        "--cacert",
        default=env.get("MERPATI_CTL_CACERT"),
        help="with --scheme https: the CA file the node's certificate is checked against",
    )
    # dest names of their own: commands have positionals called `password`.
    p.add_argument("--user", dest="api_user", default=env.get("MERPATI_CTL_USER", "guest"))
    p.add_argument(
        "--password", dest="api_password", default=env.get("MERPATI_CTL_PASSWORD", "guest")
    )
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the node")
    p.add_argument("--formatter", choices=("tsv", "json"), default="tsv")
    p.add_argument("-q", "--quiet", action="store_true", help="no informational lines")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_fn, setup, help_text) in COMMANDS.items():
        aliases = [name.replace("_", "-")] if "_" in name else []
        sp = sub.add_parser(name, aliases=aliases, help=help_text)
        # Global options are accepted after the command too (rabbitmqctl takes them anywhere).
        sp.add_argument("--formatter", choices=("tsv", "json"), default=argparse.SUPPRESS)
        sp.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS)
        setup(sp)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    name = args.command.replace("-", "_")
    fn = COMMANDS[name][0]
    client = Client(
        f"{args.scheme}://{args.host}:{args.port}",
        args.api_user,
        args.api_password,
        args.timeout,
        args.cacert,
    )
    try:
        return fn(client, args)
    except CtlError as e:
        print(f"Error: {e}", file=sys.stderr)
        return e.code
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
