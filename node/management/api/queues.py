"""Queues: list, declare, delete, purge, get messages, and the bindings to a queue."""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from ...core.declare import check_queue_declare, check_quorum_declare
from ...core.outcome import ACCEPTED, REJECTED, RELEASED
from ...metadata import commands as cmds
from ..app import bad_request, caller, json_response, not_found, read_json
from ..rates import RatesQuery
from ..views import message_json, queue_figures, queue_json, vhost_bindings
from .base import ApiBase, _bool, _declare_refused, _flag, _no_content

MAX_PAGE_SIZE = 500  # RabbitMQ's


def _page_args(request: web.Request) -> tuple[int, int]:
    try:
        page = int(request.query.get("page", "1"))
        page_size = int(request.query.get("page_size", "100"))
    except ValueError:
        raise bad_request("page and page_size must be integers")
    if page < 1:
        raise bad_request("page must be 1 or more")
    if not 1 <= page_size <= MAX_PAGE_SIZE:
        raise bad_request(f"page_size must be between 1 and {MAX_PAGE_SIZE}")
    return page, page_size


def _page(rows: list[Any], page: int, page_size: int) -> list[Any]:
    return rows[(page - 1) * page_size : page * page_size]


def _filter_by_name(rows: list[Any], name: str, use_regex: bool) -> list[Any]:
    if not name:
        return rows
    if use_regex:
        try:
            pattern = re.compile(name)
        except re.error as e:
            raise bad_request(f"invalid regular expression '{name}': {e}")
        return [r for r in rows if pattern.search(r[1].name)]
    folded = name.casefold()
    return [r for r in rows if folded in r[1].name.casefold()]


def _dig(d: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(d, dict):
            return None
        d = d.get(part)
    return d


def _sortable(v: Any) -> tuple[int, Any]:
    """Numbers before strings before anything else, so that a missing field never raises."""
    if isinstance(v, bool | int | float):
        return (0, v)
    if isinstance(v, str):
        return (1, v)
    return (2, str(v))


class QueuesApi(ApiBase):
    # -- queues -------------------------------------------------------------------------------

    async def queues(self, request: web.Request) -> web.Response:
        """Every visible queue, or with `page` RabbitMQ's paginated form: `page`, `page_size`
        (at most 500), `name` (a substring, any case, or with `use_regex=true` a regular
        expression), `sort` (a field, dotted for nested ones) and `sort_reverse`. Filtering and
        sorting by the usual fields read what the node holds without building every queue's
        JSON, so a page of 10,000 queues costs about a page."""
        rq = self._rates_query(request)
        rows = [
            (vhost, self.state.vhosts[vhost].queues[n])
            for vhost in self._visible_vhosts(request)
            for n in sorted(self.state.vhosts[vhost].queues)
        ]
        if "page" not in request.query:
            return json_response([await self._queue_json(v, qdef, rq) for v, qdef in rows])
        page, page_size = _page_args(request)
        total = len(rows)
        rows = _filter_by_name(rows, request.query.get("name", ""), _flag(request, "use_regex"))
        sort = request.query.get("sort", "")
        reverse = _flag(request, "sort_reverse")
        key = self._sort_key(sort)
        if key is not None:
            rows.sort(key=key, reverse=reverse)
            items = [await self._queue_json(v, q, rq) for v, q in _page(rows, page, page_size)]
        else:
            # Any other field: every queue's JSON, sorted by it (slower, as RabbitMQ's).
            full = [await self._queue_json(v, q, rq) for v, q in rows]
            full.sort(key=lambda d: _sortable(_dig(d, sort)), reverse=reverse)
            items = _page(full, page, page_size)
        filtered = len(rows)
        page_count = max(1, -(-filtered // page_size))
        if page > page_count:
            raise bad_request("page out of range")
        return json_response(
            {
                "filtered_count": filtered,
                "item_count": len(items),
                "items": items,
                "page": page,
                "page_count": page_count,
                "page_size": page_size,
                "total_count": total,
            }
        )

    def _sort_key(self, sort: str) -> Any:
        """A key over (vhost, QueueDef) for the fields a list is usually sorted by, read without
        asking the leaders (a remote queue's depth is this node's last word from its leader);
        None for any other field."""
        broker, rates = self.broker, self.rates

        def handle(v: str, q: Any) -> Any:
            return broker.queue(v, q.name)

        def ready(v: str, q: Any) -> int:
            h = handle(v, q)
            return h.message_count if h is not None else 0

        def unacked(v: str, q: Any) -> int:
            h = handle(v, q)
            return h.unacked if h is not None else 0

        def consumers(v: str, q: Any) -> int:
            h = handle(v, q)
            return h.consumer_count if h is not None else 0

        def policy(v: str, q: Any) -> str:
            p = self.state.vhosts[v].policy_for("queue", q.name)
            return p.name if p is not None else ""

        keys: dict[str, Any] = {
            "": lambda r: (r[0], r[1].name),
            "name": lambda r: (r[1].name, r[0]),
            "vhost": lambda r: (r[0], r[1].name),
            "node": lambda r: (r[1].leader, r[1].name),
            "leader": lambda r: (r[1].leader, r[1].name),
            "type": lambda r: (
                str((r[1].arguments or {}).get("x-queue-type", "classic")),
                r[1].name,
            ),
            "durable": lambda r: (r[1].durable, r[1].name),
            "auto_delete": lambda r: (r[1].auto_delete, r[1].name),
            "exclusive": lambda r: (r[1].exclusive_owner is not None, r[1].name),
            "policy": lambda r: (policy(*r), r[1].name),
            "messages": lambda r: (ready(*r) + unacked(*r), r[1].name),
            "messages_ready": lambda r: (ready(*r), r[1].name),
            "messages_unacknowledged": lambda r: (unacked(*r), r[1].name),
            "consumers": lambda r: (consumers(*r), r[1].name),
            "message_stats.publish_details.rate": lambda r: (
                rates.queue_rate(r[0], r[1].name),
                r[1].name,
            ),
        }
        return keys.get(sort)

    async def _queue_json(self, vhost: str, qdef: Any, rq: RatesQuery) -> dict[str, Any]:
        out = await queue_json(self.node, vhost, qdef)
        stats, depth = self.rates.queue_details(
            vhost,
            qdef.name,
            rq,
            (out["messages"], out["messages_ready"], out["messages_unacknowledged"]),
        )
        out["message_stats"] = stats
        out.update(depth)
        return out

    def _queue(self, request: web.Request, write: bool = False) -> tuple[str, Any]:
        vhost = self._vhost(request, write)
        name = request.match_info["name"]
        qdef = self.state.queue(vhost, name)
        if qdef is None:
            raise not_found(f"no queue '{name}' in vhost '{vhost}'")
        return vhost, qdef

    async def queue(self, request: web.Request) -> web.Response:
        vhost, qdef = self._queue(request)
        return json_response(await self._queue_json(vhost, qdef, self._rates_query(request)))

    async def queue_put(self, request: web.Request) -> web.Response:
        vhost = self._vhost(request, write=True)
        name = request.match_info["name"]
        if not name:
            raise bad_request("queue name is required")
        body = await read_json(request)
        args = body.get("arguments") or {}
        if not isinstance(args, dict):
            raise bad_request("arguments must be an object")
        durable, auto_delete = _bool(body, "durable", True), _bool(body, "auto_delete", False)
        with _declare_refused():
            check_queue_declare(vhost, name, args)
            if self.state.queue(vhost, name) is None:
                check_quorum_declare(
                    vhost,
                    name,
                    args,
                    durable=durable,
                    exclusive=False,
                    auto_delete=auto_delete,
                    default_type=self.broker.default_queue_type_in(vhost),
                )
        result = await self._propose(
            self.broker.declare_queue(vhost, name, durable, None, auto_delete, args)
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
