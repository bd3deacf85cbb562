"""Prometheus metrics: one registry per app, request count and latency by route and status."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import generate_latest
from starlette.types import Scope

from service.http.responses import declared
from service.kit.request import route_template

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class HttpMetrics:
    """The HTTP request counters of one app, in that app's own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        labels = ["method", "route", "status"]
        self.requests = Counter(
            "fintegrate_http_requests_total",
            "HTTP requests answered, by route template and status",
            labels,
            registry=self.registry,
        )
        self.latency = Histogram(
            "fintegrate_http_request_duration_seconds",
            "Time to answer an HTTP request, by route template and status",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        # The labelled children, bound once per (method, route, status): ``labels()`` takes
        # a lock and builds its key on every call.
        self._bound: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    def observe(self, scope: Scope, status: int, seconds: float) -> None:
        """Count one answered request and its latency."""
        key = (scope.get("method", ""), route_template(scope), status)
        bound = self._bound.get(key)
        if bound is None:
            labels = (key[0], key[1], str(status))
            bound = self.requests.labels(*labels), self.latency.labels(*labels)
            self._bound[key] = bound
        bound[0].inc()
        bound[1].observe(seconds)


router = APIRouter(tags=["operations"])


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {"content": {"text/plain": {}}, "description": "Prometheus text format"},
        **declared(),
    },
)
def metrics(request: Request) -> Response:
    """Prometheus text exposition of this process's metrics."""
    registry: CollectorRegistry = request.app.state.metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
