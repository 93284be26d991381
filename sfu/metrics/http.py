"""``GET /metrics``: Prometheus text format, or OpenMetrics when the scraper asks for it."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CollectorRegistry, GCCollector, ProcessCollector
from prometheus_client.exposition import choose_encoder

from sfu.metrics.collector import MetricSources, SfuCollector

__all__ = ["add_metrics_route", "build_registry"]


def build_registry(sources: MetricSources) -> CollectorRegistry:
    """A registry of our own (not the global default): the SFU's metrics plus process ones."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SfuCollector(sources))
    ProcessCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


def add_metrics_route(app: web.Application, registry: CollectorRegistry) -> None:
    """Serve ``registry`` at ``GET /metrics`` with content negotiation on ``Accept``."""

    async def metrics(request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        body = encoder(registry)
        response = web.Response(body=body, headers={"Cache-Control": "no-store"})
        response.headers["Content-Type"] = content_type
        return response

    app.router.add_get("/metrics", metrics, allow_head=True)
