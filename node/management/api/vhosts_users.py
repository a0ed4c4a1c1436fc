"""Virtual hosts, users and their permissions: the administrator's part of the API."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ...broker import hash_password
from ...metadata import commands as cmds
from ..app import bad_request, caller, json_response, not_found, read_json
from ..definitions import vhost_metadata
from ..views import queue_figures
from .base import ApiBase, _no_content


def _tags(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(t.strip() for t in value.split(",") if t.strip())
    if isinstance(value, list):
        return tuple(str(t) for t in value)
    raise bad_request("tags must be a comma-separated string or a list")


class VhostsUsersApi(ApiBase):
    # -- vhosts -------------------------------------------------------------------------------

    async def _vhost_json(self, vhost: str) -> dict[str, Any]:
        ready = unacked = 0
        for qdef in self.state.vhosts[vhost].queues.values():
            r, u, _c = await queue_figures(self.broker.queue(vhost, qdef.name))
            ready += r
            unacked += u
        vh = self.state.vhosts[vhost]
        meta = {
            "description": vh.description,
            "tags": list(vh.tags),
            "default_queue_type": self.broker.default_queue_type_in(vhost),
        }
        return {
            "name": vhost,
            **meta,
            "metadata": meta,
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
        body = await read_json(request)
        meta = vhost_metadata({"name": vhost, **body})
        result = await self._propose(cmds.AddVhost(vhost, **meta))
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
            "limits": dict(self.state.user_limits.get(user.name, {})),
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
