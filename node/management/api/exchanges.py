"""Exchanges: list, declare, delete, their bindings, and publishing a message to one."""

from __future__ import annotations

import base64
from typing import Any

from aiohttp import web

from ...core.declare import check_exchange_declare
from ...core.publish import UNROUTED
from ...metadata import commands as cmds
from ..app import ApiError, bad_request, caller, json_response, not_found, read_json
from ..views import exchange_json, vhost_bindings
from .base import ApiBase, _bool, _declare_refused, _flag, _no_content


class ExchangesApi(ApiBase):
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
        from ...core.message import Message
        from ...wire.properties import encode_properties

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
