"""Definitions export and import in RabbitMQ's format (`rabbitmqctl export_definitions`).

Users keep their password hashes: Merpati stores RabbitMQ's salted SHA-256 form, so definitions
move between Merpati and RabbitMQ (3.6+, `rabbit_password_hashing_sha256`) both ways. Exclusive
queues, the default exchange and the `amq.*` exchanges are not exported, as in RabbitMQ.
Import applies vhosts, users, permissions, vhost limits, policies, exchanges, queues, then
bindings, each as a metadata command; what already exists equivalently is left alone.

Limits travel as in RabbitMQ: a user's in its entry's "limits" (merged into those it has, as
`set_user_limits` does), a vhost's as a runtime parameter of component "vhost-limits" named
"limits" (replacing its limits, as `set_vhost_limits` does). Export also shows a vhost's in its
entry's "limits", as RabbitMQ does; import reads only the parameter, as RabbitMQ does. Vhost
limits come before queues, so a file's queues are counted against the file's max-queues.

Import is all or nothing: every queue and exchange first gets the checks a declaration gets
(node/core/declare.py), then the whole list of commands is tried on a copy of the metadata state,
and only when all of it applies there is any of it proposed. A refused file is answered 400 naming
the item and what is wrong with it. (On a cluster, a change that lands between that trial and the
proposals can still make a later command fail; the trial catches everything the file itself gets
wrong.) The predeclared `amq.*` exchanges in a file are skipped, as RabbitMQ does; any other
`amq.*` exchange is refused, as exchange.declare refuses it.
"""

from __future__ import annotations

import copy
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..core.declare import (
    DeclareError,
    check_exchange_declare,
    check_policy_definition,
    check_queue_declare,
    check_quorum_declare,
)
from ..core.limits import USER_LIMITS, VHOST_LIMITS, validate
from ..metadata import commands as cmds
from ..metadata.state import DEFAULT_EXCHANGES, VHOST_QUEUE_TYPES, MetadataError
from .app import bad_request
from .views import jsonable

if TYPE_CHECKING:
    from ..server import Node

SHA256 = "rabbit_password_hashing_sha256"


_PREDECLARED = frozenset(name for name, _ in DEFAULT_EXCHANGES)


def _system_exchange(name: str) -> bool:
    return not name or name.startswith("amq.")


def _refused(kind: str, name: str, vhost: str, why: str) -> Exception:
    return bad_request(
        f"definitions refused, nothing imported: {kind} '{name}' in vhost '{vhost}': {why}"
    )


def _vhost_export(vh: Any, limits: dict[str, int] | None) -> dict[str, Any]:
    meta = {"description": vh.description, "tags": list(vh.tags)}
    if vh.default_queue_type:
        meta["default_queue_type"] = vh.default_queue_type
    # RabbitMQ writes a vhost's limits as a list of pairs, an object once there are some.
    return {"name": vh.name, "limits": dict(limits) if limits else [], **meta, "metadata": meta}


VHOST_LIMITS_COMPONENT = "vhost-limits"


def _limits_parameter(vhost: str, limits: dict[str, int]) -> dict[str, Any]:
    """A vhost's limits as RabbitMQ exports them: its one `vhost-limits` runtime parameter."""
    return {
        "value": dict(limits),
        "vhost": vhost,
        "component": VHOST_LIMITS_COMPONENT,
        "name": "limits",
    }


def vhost_metadata(item: dict[str, Any]) -> dict[str, Any]:
    """A vhost's description, tags and default queue type from an API body or a definitions
    entry: top level (RabbitMQ 3.x) or under "metadata" (3.11+); None where absent."""
    meta = item.get("metadata") or {}
    out: dict[str, Any] = {}
    for key in ("description", "tags", "default_queue_type"):
        value = item.get(key, meta.get(key))
        if value is not None and key == "tags":
            if isinstance(value, str):
                value = tuple(t.strip() for t in value.split(",") if t.strip())
            elif isinstance(value, list):
                value = tuple(str(t) for t in value)
            else:
                raise bad_request("vhost tags must be a comma-separated string or a list")
        elif value is not None:
            value = str(value)
        out[key] = value
    qtype = out["default_queue_type"]
    if qtype not in (None, *VHOST_QUEUE_TYPES):
        raise bad_request(
            f"vhost '{item.get('name', '')}': default_queue_type '{qtype}' is not one of "
            f"{', '.join(VHOST_QUEUE_TYPES)}"
        )
    return out


def export(node: Node, only_vhost: str | None = None) -> dict[str, Any]:
    state = node.broker.state
    vhosts = [only_vhost] if only_vhost is not None else sorted(state.vhosts)
    queues, exchanges, bindings, policies, parameters = [], [], [], [], []
    for vhost in vhosts:
        vh = state.vhosts[vhost]
        if state.vhost_limits.get(vhost):
            parameters.append(_limits_parameter(vhost, state.vhost_limits[vhost]))
        for name in sorted(vh.queues):
            q = vh.queues[name]
            if q.exclusive_owner is not None:
                continue
            queues.append(
                {
                    "name": name,
                    "vhost": vhost,
                    "durable": q.durable,
                    "auto_delete": q.auto_delete,
                    "arguments": jsonable(q.arguments or {}),
                }
            )
        for name in sorted(vh.exchanges):
            ex = vh.exchanges[name]
            if _system_exchange(name):
                continue
            exchanges.append(
                {
                    "name": name,
                    "vhost": vhost,
                    "type": ex.type,
                    "durable": ex.durable,
                    "auto_delete": ex.auto_delete,
                    "internal": ex.internal,
                    "arguments": jsonable(ex.arguments or {}),
                }
            )
        for name in sorted(vh.exchanges):
            for b in vh.exchanges[name].bindings.values():
                kind, dest = b.destination
                if kind == "q" and (vh.queues.get(dest) is None or vh.queues[dest].exclusive_owner):
                    continue
                bindings.append(
                    {
                        "source": b.source,
                        "vhost": vhost,
                        "destination": dest,
                        "destination_type": "queue" if kind == "q" else "exchange",
                        "routing_key": b.routing_key,
                        "arguments": jsonable(b.arguments or {}),
                    }
                )
        for name in sorted(vh.policies):
            p = vh.policies[name]
            policies.append(
                {
                    "vhost": vhost,
                    "name": name,
                    "pattern": p.pattern,
                    "apply-to": p.apply_to,
                    "definition": jsonable(p.definition),
                    "priority": p.priority,
                }
            )
    head = {
        "rabbit_version": __version__,
        "rabbitmq_version": __version__,
        "product_name": "Merpati",
        "product_version": __version__,
    }
    if only_vhost is not None:
        for item in queues + exchanges + bindings + policies + parameters:
            item.pop("vhost", None)
        return head | {
            "parameters": parameters,
            "policies": policies,
            "queues": queues,
            "exchanges": exchanges,
            "bindings": bindings,
        }
    return head | {
        "users": [
            {
                "name": u.name,
                "password_hash": u.password_hash,
                "hashing_algorithm": SHA256,
                "tags": list(u.tags),
                "limits": dict(state.user_limits.get(u.name, {})),
            }
            for _, u in sorted(state.users.items())
        ],
        "vhosts": [_vhost_export(state.vhosts[v], state.vhost_limits.get(v)) for v in vhosts],
        "permissions": [
            {"user": u, "vhost": v, "configure": p.configure, "write": p.write, "read": p.read}
            for (u, v), p in sorted(state.permissions.items())
        ],
        "topic_permissions": [],
        "parameters": parameters,
        "global_parameters": [],
        "policies": policies,
        "queues": queues,
        "exchanges": exchanges,
        "bindings": bindings,
    }


def _list(body: dict[str, Any], key: str) -> list[dict[str, Any]]:
    items = body.get(key) or []
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise bad_request(f"'{key}' must be a list of objects")
    return items


def _tags(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(t.strip() for t in value.split(",") if t.strip())
    return tuple(str(t) for t in value or ())


def commands(node: Node, body: dict[str, Any], only_vhost: str | None = None) -> list[Any]:
    """The metadata commands that import `body` (raises ApiError for malformed input)."""
    from ..broker import hash_password

    out: list[Any] = []
    user_limits: list[Any] = []  # after the permissions, once the users exist
    imported_types: dict[str, str] = {}  # default queue types of the vhosts imported

    def vh(item: dict[str, Any]) -> str:
        return only_vhost if only_vhost is not None else str(item.get("vhost", "/"))

    try:
        if only_vhost is None:
            for v in _list(body, "vhosts"):
                meta = vhost_metadata(v)
                out.append(cmds.AddVhost(str(v["name"]), **meta))
                imported_types[str(v["name"])] = meta["default_queue_type"] or ""
            for u in _list(body, "users"):
                if "password_hash" in u:
                    algo = u.get("hashing_algorithm", SHA256)
                    if algo != SHA256:
                        raise bad_request(
                            f"user '{u['name']}': unsupported hashing_algorithm '{algo}'"
                        )
                    pw_hash = str(u["password_hash"])
                else:
                    pw_hash = hash_password(str(u.get("password", "")))
                out.append(cmds.PutUser(str(u["name"]), pw_hash, _tags(u.get("tags"))))
                limits = u.get("limits")
                if limits:  # {} and [] (RabbitMQ's "none") leave a user's limits as they are
                    user_limits.append(
                        cmds.SetUserLimits(str(u["name"]), _limits("user", u, limits, USER_LIMITS))
                    )
            for p in _list(body, "permissions"):
                out.append(
                    cmds.SetPermissions(
                        str(p["user"]),
                        str(p["vhost"]),
                        str(p.get("configure", ".*")),
                        str(p.get("write", ".*")),
                        str(p.get("read", ".*")),
                    )
                )
            out += user_limits
        for p in _list(body, "parameters"):
            # Other components (federation, shovels...) are not Merpati's: skipped, as before.
            if p.get("component") == VHOST_LIMITS_COMPONENT:
                value = _limits("vhost", {"name": vh(p)}, p.get("value"), VHOST_LIMITS)
                out.append(cmds.SetVhostLimits(vh(p), value, replace=True))
        for p in _list(body, "policies"):
            invalid = check_policy_definition(dict(p.get("definition") or {}))
            if invalid is not None:
                raise _refused("policy", str(p["name"]), vh(p), invalid)
            out.append(
                cmds.SetPolicy(
                    vh(p),
                    str(p["name"]),
                    str(p["pattern"]),
                    dict(p.get("definition") or {}),
                    int(p.get("priority", 0)),
                    str(p.get("apply-to", "all")),
                )
            )
        for e in _list(body, "exchanges"):
            name = str(e["name"])
            if not name or name in _PREDECLARED:
                continue
            type_ = str(e.get("type", "direct"))
            arguments = dict(e.get("arguments") or {})
            try:
                check_exchange_declare(vh(e), name, type_, arguments)
            except DeclareError as err:
                raise _refused("exchange", name, vh(e), err.text)
            out.append(
                cmds.DeclareExchange(
                    vh(e),
                    name,
                    type_,
                    bool(e.get("durable", True)),
                    bool(e.get("auto_delete", False)),
                    bool(e.get("internal", False)),
                    arguments,
                )
            )
        for q in _list(body, "queues"):
            name = str(q["name"])
            arguments = dict(q.get("arguments") or {})
            durable, auto_delete = bool(q.get("durable", True)), bool(q.get("auto_delete", False))
            try:
                check_queue_declare(vh(q), name, arguments)
                if node.broker.state.queue(vh(q), name) is None:
                    check_quorum_declare(
                        vh(q),
                        name,
                        arguments,
                        durable=durable,
                        exclusive=False,
                        auto_delete=auto_delete,
                        default_type=imported_types.get(vh(q))
                        or node.broker.default_queue_type_in(vh(q)),
                    )
            except DeclareError as err:
                raise _refused("queue", name, vh(q), err.text)
            out.append(
                node.broker.declare_queue(
                    vh(q),
                    name,
                    durable,
                    None,
                    auto_delete,
                    arguments,
                    default_type=imported_types.get(vh(q)),
                )
            )
        for b in _list(body, "bindings"):
            kind = "q" if b.get("destination_type", "queue") == "queue" else "e"
            out.append(
                cmds.Bind(
                    vh(b),
                    str(b["source"]),
                    kind,
                    str(b["destination"]),
                    str(b.get("routing_key", "")),
                    dict(b.get("arguments") or {}),
                )
            )
    except (KeyError, TypeError, ValueError) as e:
        raise bad_request(f"malformed definitions: {type(e).__name__}: {e}")
    return out


async def import_(
    node: Node,
    body: dict[str, Any],
    only_vhost: str | None,
    propose: Callable[[Any], Awaitable[Any]],
) -> int:
    """Apply the definitions, all or nothing; returns the number of commands."""
    todo = commands(node, body, only_vhost)
    trial = copy.deepcopy(node.broker.state)
    for cmd in todo:
        result = trial.apply(cmd)
        if isinstance(result, MetadataError):
            raise bad_request(
                f"definitions refused, nothing imported: {_describe(cmd)}: {result.text}"
            )
    for cmd in todo:
        try:
            await propose(cmd)
        except MetadataError as e:
            raise bad_request(f"{_describe(cmd)}: {e.text}")
    return len(todo)


def _limits(
    kind: str, item: dict[str, Any], value: Any, allowed: tuple[str, ...]
) -> dict[str, int]:
    try:
        return validate(f"{kind}-limits", allowed, value)
    except ValueError as e:
        raise bad_request(
            f"definitions refused, nothing imported: limits of {kind} '{item.get('name', '')}': {e}"
        )


def _describe(cmd: Any) -> str:
    """The item a command comes from, as a definitions file names it."""
    if isinstance(cmd, cmds.SetVhostLimits):
        return f"limits of vhost '{cmd.vhost}'"
    if isinstance(cmd, cmds.SetUserLimits):
        return f"limits of user '{cmd.user}'"
    if isinstance(cmd, cmds.Bind):
        what = "queue" if cmd.destination_kind == "q" else "exchange"
        return (
            f"binding from exchange '{cmd.source}' to {what} '{cmd.destination}' "
            f"in vhost '{cmd.vhost}'"
        )
    kind = {
        cmds.AddVhost: "vhost",
        cmds.PutUser: "user",
        cmds.SetPolicy: "policy",
        cmds.DeclareExchange: "exchange",
        cmds.DeclareQueue: "queue",
    }.get(type(cmd))
    if kind is None:
        if isinstance(cmd, cmds.SetPermissions):
            return f"permissions of user '{cmd.user}' in vhost '{cmd.vhost}'"
        return type(cmd).__name__
    where = f" in vhost '{cmd.vhost}'" if kind not in ("vhost", "user") else ""
    return f"{kind} '{cmd.name}'{where}"
