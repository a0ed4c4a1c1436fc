"""The Prometheus endpoint: `/metrics`, `/metrics/per-object`, `/metrics/detailed` over aiohttp.

It runs on the node's event loop, so the collectors read broker state without locks; a scrape
costs the loop the time to format the families (about a millisecond for a few hundred queues).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from .collector import DETAILED_FAMILIES, DetailedCollector, NodeCollector

if TYPE_CHECKING:
    from ..server import Node


def _registry(collector: object) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(collector)  # type: ignore[arg-type]
    return reg


def metrics_app(node: Node) -> web.Application:
    aggregated = _registry(NodeCollector(node, "aggregated"))
    per_object = _registry(NodeCollector(node, "per-object"))

    def render(request: web.Request, registry: CollectorRegistry) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encoder(registry), headers={"Content-Type": content_type})

    async def metrics(request: web.Request) -> web.Response:
        return render(request, aggregated)

    async def metrics_per_object(request: web.Request) -> web.Response:
        return render(request, per_object)

    async def metrics_detailed(request: web.Request) -> web.Response:
        families = [f for v in request.query.getall("family", []) for f in v.split(",") if f]
        unknown = [f for f in families if f not in DETAILED_FAMILIES]
        if unknown:
            return web.Response(
                status=400,
                text=f"unknown metric families: {', '.join(unknown)} "
                f"(known: {', '.join(DETAILED_FAMILIES)})\n",
            )
        vhosts = request.query.getall("vhost", [])
        return render(request, _registry(DetailedCollector(node, families, vhosts)))

    async def index(request: web.Request) -> web.Response:
        return web.Response(
            text="Merpati Prometheus exporter: /metrics, /metrics/per-object, "
            "/metrics/detailed?family=...\n"
        )

    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/metrics/per-object", metrics_per_object)
    app.router.add_get("/metrics/detailed", metrics_detailed)
    return app
