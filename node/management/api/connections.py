"""Connections, channels and consumers: listed, shown, and connections closed."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..app import caller, json_response, not_authorised, not_found
from ..views import channel_json, connection_json, connection_name, consumer_json, open_channels
from .base import ApiBase, _no_content


class ConnectionsApi(ApiBase):
    # -- connections, channels, consumers -----------------------------------------------------

    def _conns(self, request: web.Request) -> list[Any]:
        who = caller(request)
        vhosts = set(self._visible_vhosts(request))
        return sorted(
            (
                c
                for c in self.broker.connections
                if c.vhost in vhosts and (who.sees_all or c.user == who.name)
            ),
            key=lambda c: c.id,
        )

    def _find_conn(self, request: web.Request) -> Any:
        name = request.match_info["name"]
        for c in self._conns(request):
            if connection_name(c) == name or c.id == name:
                return c
        raise not_found(f"no connection '{name}'")

    async def connections(self, request: web.Request) -> web.Response:
        return json_response([connection_json(self.node, c) for c in self._conns(request)])

    async def connection(self, request: web.Request) -> web.Response:
        return json_response(connection_json(self.node, self._find_conn(request)))

    async def connection_close(self, request: web.Request) -> web.Response:
        conn = self._find_conn(request)
        who = caller(request)
        if not who.is_admin and conn.user != who.name:
            raise not_authorised("Not administrator user")
        conn.force_close(request.headers.get("X-Reason", "Closed via management plugin"))
        conn.flush_soon()
        return _no_content()

    async def channels(self, request: web.Request) -> web.Response:
        conns = [self._find_conn(request)] if "name" in request.match_info else self._conns(request)
        out = [channel_json(self.node, conn, ch) for conn in conns for ch in open_channels(conn)]
        return json_response(out)

    async def consumers(self, request: web.Request) -> web.Response:
        out = [
            consumer_json(self.node, conn, ch, c)
            for conn in self._conns(request)
            for ch in open_channels(conn)
            for c in ch.consumers.values()
        ]
        return json_response(out)
