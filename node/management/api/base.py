"""What every group of management routes shares: the node, its broker and metadata state, the
access checks on vhosts, proposing metadata commands, and small request/response helpers."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ...core.declare import ACCESS_REFUSED, DeclareError
from ..app import ApiError, Caller, bad_request, caller, not_authorised, not_found
from ..rates import RateHistory, RatesQuery

if TYPE_CHECKING:
    from ...server import Node


def _no_content() -> web.Response:
    return web.Response(status=204)


def _flag(request: web.Request, name: str) -> bool:
    return request.query.get(name, "").lower() in ("true", "1", "yes")


def _bool(body: dict[str, Any], key: str, default: bool) -> bool:
    value = body.get(key, default)
    if isinstance(value, str):
        return value.lower() in ("true", "1", "yes")
    return bool(value)


@contextmanager
def _declare_refused() -> Iterator[None]:
    """A refused declaration as RabbitMQ's API answers it: 403 for a reserved name, else 400,
    with the text a channel would close with."""
    try:
        yield
    except DeclareError as e:
        if e.code == ACCESS_REFUSED:
            raise ApiError(403, "access_refused", e.text)
        raise bad_request(e.text)


class ApiBase:
    """The state the handlers read and the checks they share; each route group subclasses it
    and `routes.ManagementApi` combines them."""

    def __init__(self, node: Node) -> None:
        self.node = node
        interval = getattr(node.config, "collect_statistics_interval", 5000) / 1000
        self.rates = RateHistory(node, interval=interval)

    @property
    def broker(self) -> Any:
        return self.node.broker

    @property
    def state(self) -> Any:
        return self.node.broker.state

    # -- access helpers -----------------------------------------------------------------------

    def _vhost(self, request: web.Request, write: bool = False) -> str:
        vhost = request.match_info["vhost"]
        if vhost not in self.state.vhosts:
            raise not_found(f"no vhost '{vhost}'")
        self._check_vhost(caller(request), vhost, write)
        return vhost

    def _check_vhost(self, who: Caller, vhost: str, write: bool = False) -> None:
        if write and not who.is_admin:
            raise not_authorised("Not administrator user")
        if not who.sees_all and (who.name, vhost) not in self.state.permissions:
            raise not_authorised(f"Not authorised to access vhost '{vhost}'")

    def _visible_vhosts(self, request: web.Request) -> list[str]:
        who = caller(request)
        if "vhost" in request.match_info:
            return [self._vhost(request)]
        return [
            v for v in self.state.vhosts if who.sees_all or (who.name, v) in self.state.permissions
        ]

    def _admin(self, request: web.Request) -> None:
        if not caller(request).is_admin:
            raise not_authorised("Not administrator user")

    def _rates_query(self, request: web.Request) -> RatesQuery:
        try:
            return RatesQuery.parse(request.query)
        except ValueError as e:
            raise bad_request(str(e))

    async def _propose(self, cmd: Any) -> Any:
        return await self.broker.propose(cmd)
