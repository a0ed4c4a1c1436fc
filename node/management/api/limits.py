"""Vhost and user limits (node/core/limits.py) under RabbitMQ's paths, and two of Merpati's.

RabbitMQ's: `GET /api/vhost-limits[/{vhost}]` and `GET /api/user-limits[/{user}]` list
`[{"vhost"|"user": NAME, "value": {LIMIT: N}}]` (only those with limits); `PUT
/api/vhost-limits/{vhost}/{name}` and `PUT /api/user-limits/{user}/{name}` with `{"value": N}`
set one limit, keeping the others; `DELETE` of the same paths clears one (`DELETE
/api/user-limits/{user}/all` clears them all). Changes are for administrators.

Merpati's, for `merpati ctl` (rabbitmqctl's commands set several limits in one change, which
RabbitMQ's HTTP API cannot): `PUT /api/merpati/vhost-limits/{vhost}` with the whole definition
replaces the vhost's limits (`set_vhost_limits`), `DELETE` of it clears them
(`clear_vhost_limits`), and `PUT /api/merpati/user-limits/{user}` merges a definition into the
user's (`set_user_limits`). Each is one metadata command, so it applies whole or not at all.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ...core.limits import USER_LIMITS, VHOST_LIMITS, validate
from ...metadata import commands as cmds
from ..app import bad_request, caller, json_response, not_authorised, not_found, read_json
from .base import ApiBase, _no_content


def _value(body: dict[str, Any]) -> Any:
    if "value" not in body:
        raise bad_request("key_missing: value")
    return body["value"]


def _checked(component: str, allowed: tuple[str, ...], limits: Any) -> dict[str, int]:
    """Validated before proposing, so a refused change leaves nothing in the log (the state
    machine checks again: it decides)."""
    try:
        return validate(component, allowed, limits)
    except ValueError as e:
        raise bad_request(str(e))


class LimitsApi(ApiBase):
    # -- vhost limits -------------------------------------------------------------------------

    async def vhost_limits(self, request: web.Request) -> web.Response:
        limits = self.state.vhost_limits
        return json_response(
            [
                {"vhost": v, "value": dict(limits[v])}
                for v in sorted(self._visible_vhosts(request))
                if v in limits
            ]
        )

    def _limits_vhost(self, request: web.Request) -> str:
        self._admin(request)
        vhost = request.match_info["vhost"]
        if vhost not in self.state.vhosts:
            raise not_found(f"no vhost '{vhost}'")
        return vhost

    async def vhost_limit_put(self, request: web.Request) -> web.Response:
        vhost = self._limits_vhost(request)
        name = request.match_info["name"]
        limits = _checked("vhost-limits", VHOST_LIMITS, {name: _value(await read_json(request))})
        await self._propose(cmds.SetVhostLimits(vhost, limits, replace=False))
        return _no_content()

    async def vhost_limit_delete(self, request: web.Request) -> web.Response:
        vhost = self._limits_vhost(request)
        await self._propose(cmds.ClearVhostLimits(vhost, (request.match_info["name"],)))
        return _no_content()

    async def vhost_limits_put(self, request: web.Request) -> web.Response:
        vhost = self._limits_vhost(request)
        limits = _checked("vhost-limits", VHOST_LIMITS, await read_json(request))
        await self._propose(cmds.SetVhostLimits(vhost, limits, replace=True))
        return _no_content()

    async def vhost_limits_delete(self, request: web.Request) -> web.Response:
        vhost = self._limits_vhost(request)
        await self._propose(cmds.ClearVhostLimits(vhost))
        return _no_content()

    # -- user limits --------------------------------------------------------------------------

    async def user_limits(self, request: web.Request) -> web.Response:
        # Administrators and monitoring users see every user's limits, others their own.
        who = caller(request)
        limits = self.state.user_limits
        names = sorted(limits) if who.sees_all else [n for n in (who.name,) if n in limits]
        if "user" in request.match_info:
            name = request.match_info["user"]
            if name not in self.state.users:
                raise not_found(f"no user '{name}'")
            if not who.sees_all and name != who.name:
                raise not_authorised("Not administrator user")
            names = [name] if name in limits else []
        return json_response([{"user": n, "value": dict(limits[n])} for n in names])

    def _limits_user(self, request: web.Request) -> str:
        self._admin(request)
        user = request.match_info["user"]
        if user not in self.state.users:
            raise not_found(f"no user '{user}'")
        return user

    async def user_limit_put(self, request: web.Request) -> web.Response:
        user = self._limits_user(request)
        name = request.match_info["name"]
        limits = _checked("user-limits", USER_LIMITS, {name: _value(await read_json(request))})
        await self._propose(cmds.SetUserLimits(user, limits))
        return _no_content()

    async def user_limit_delete(self, request: web.Request) -> web.Response:
        user = self._limits_user(request)
        await self._propose(cmds.ClearUserLimits(user, (request.match_info["name"],)))
        return _no_content()

    async def user_limits_put(self, request: web.Request) -> web.Response:
        user = self._limits_user(request)
        limits = _checked("user-limits", USER_LIMITS, await read_json(request))
        await self._propose(cmds.SetUserLimits(user, limits))
        return _no_content()
