"""Bindings: listed per vhost, and created, shown and deleted between an exchange and a queue
(`/q/`) or another exchange (`/e/`)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ...metadata import commands as cmds
from ..app import ApiError, bad_request, json_response, not_found, read_json
from ..views import props_key, vhost_bindings
from .base import ApiBase, _no_content


class BindingsApi(ApiBase):
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
