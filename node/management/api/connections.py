"""Connections, channels and consumers: listed, shown, and connections closed, the whole
cluster's: the other nodes' come over the forwarding ClientViews call (ClusterSeam.peer_client_views),
each node's from its own state, so a listing holds what each node knew when it answered."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..app import caller, json_response, not_authorised, not_found
from ..views import (
    channel_json,
    client_view_owner,
    connection_json,
    connection_name,
    consumer_json,
    open_channels,
)
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
        """This node's connection named in the path, None when it is not here."""
        name = request.match_info["name"]
        for c in self._conns(request):
            if connection_name(c) == name or c.id == name:
                return c
        return None

    async def _remote(self, request: web.Request, kind: str) -> list[dict[str, Any]]:
        """The other nodes' clients of `kind` this caller may see: every node answers for the
        whole cluster, as RabbitMQ's API does (and, under --workers, whichever worker the kernel
        hands the request to)."""
        who = caller(request)
        vhosts = set(self._visible_vhosts(request))
        out = []
        for item in await self.broker.cluster.peer_client_views(kind):
            try:
                vhost, user = client_view_owner(kind, item)
            except (KeyError, TypeError):
                continue  # not a view this node knows how to read: shown to no one
            if vhost in vhosts and (who.sees_all or user == who.name):
                out.append(item)
        return out

    async def _find_remote(self, request: web.Request) -> dict[str, Any]:
        name = request.match_info["name"]
        for item in await self._remote(request, "connections"):
            if name in (item.get("name"), item.get("merpati_id")):
                return item
        raise not_found(f"no connection '{name}'")

    async def connections(self, request: web.Request) -> web.Response:
        here = [connection_json(self.node, c) for c in self._conns(request)]
        return json_response(here + await self._remote(request, "connections"))

    async def connection(self, request: web.Request) -> web.Response:
        conn = self._find_conn(request)
        if conn is None:
            return json_response(await self._find_remote(request))
        return json_response(connection_json(self.node, conn))

    async def connection_close(self, request: web.Request) -> web.Response:
        who = caller(request)
        reason = request.headers.get("X-Reason", "Closed via management plugin")
        conn = self._find_conn(request)
        if conn is None:
            item = await self._find_remote(request)
            if not who.is_admin and item["user"] != who.name:
                raise not_authorised("Not administrator user")
            if not await self.broker.cluster.close_peer_connection(
                item["node"], item["name"], reason
            ):
                raise not_found(f"no connection '{request.match_info['name']}'")
            return _no_content()
        if not who.is_admin and conn.user != who.name:
            raise not_authorised("Not administrator user")
        conn.force_close(reason)
        conn.flush_soon()
        return _no_content()

    async def channels(self, request: web.Request) -> web.Response:
        if "name" not in request.match_info:
            conns = self._conns(request)
            here = [channel_json(self.node, c, ch) for c in conns for ch in open_channels(c)]
            return json_response(here + await self._remote(request, "channels"))
        conn = self._find_conn(request)
        if conn is not None:
            return json_response([channel_json(self.node, conn, ch) for ch in open_channels(conn)])
        remote = await self._find_remote(request)
        return json_response(
            [
                ch
                for ch in await self._remote(request, "channels")
                if ch["connection_details"]["name"] == remote["name"]
                and ch["node"] == remote["node"]
            ]
        )

    async def consumers(self, request: web.Request) -> web.Response:
        here = [
            consumer_json(self.node, conn, ch, c)
            for conn in self._conns(request)
            for ch in open_channels(conn)
            for c in ch.consumers.values()
        ]
        return json_response(here + await self._remote(request, "consumers"))
