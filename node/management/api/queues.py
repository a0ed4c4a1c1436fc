"""Queues: list, declare, delete, purge, get messages, and the bindings to a queue."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ...core.declare import check_queue_declare, check_quorum_declare
from ...core.outcome import ACCEPTED, REJECTED, RELEASED
from ...metadata import commands as cmds
from ..app import bad_request, caller, json_response, not_found, read_json
from ..views import message_json, queue_figures, queue_json, vhost_bindings
from .base import ApiBase, _bool, _declare_refused, _flag, _no_content


class QueuesApi(ApiBase):
    # -- queues -------------------------------------------------------------------------------

    async def queues(self, request: web.Request) -> web.Response:
        out = []
        for vhost in self._visible_vhosts(request):
            vh = self.state.vhosts[vhost]
            # The queues as they are now: a queue deleted while a remote queue's stats are
            # awaited (an exclusive queue whose connection closed) must not make this a 500.
            qdefs = [vh.queues[n] for n in sorted(vh.queues)]
            out += [await queue_json(self.node, vhost, qdef) for qdef in qdefs]
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
