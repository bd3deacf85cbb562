"""`--metrics-port` of the foreground processes: Prometheus text on a loopback port."""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, start_http_server


def start_metrics_server(
    port: int, host: str = "127.0.0.1", registry: CollectorRegistry = REGISTRY
) -> None:
    """Serve ``registry`` at ``http://host:port/metrics`` on a daemon thread."""
    start_http_server(port, addr=host, registry=registry)
