"""Policies: read by whoever sees the vhost, written by administrators and policymakers."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ...core.declare import check_policy_definition
from ...metadata import commands as cmds
from ..app import bad_request, caller, json_response, not_authorised, not_found, read_json
from ..views import jsonable
from .base import ApiBase, _no_content


class PoliciesApi(ApiBase):
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
        invalid = check_policy_definition(body["definition"])
        if invalid is not None:
            raise bad_request(f"Validation failed\n\n{invalid}\n")  # RabbitMQ's wording
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
