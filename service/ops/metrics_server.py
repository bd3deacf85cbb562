"""The ``--metrics-port`` of the long-running processes: Prometheus text on a small HTTP server."""

from __future__ import annotations

from prometheus_client import start_http_server


def start_metrics_server(port: int, host: str = "127.0.0.1") -> None:
    """Serve the process's default registry on ``http://host:port/metrics`` (a daemon thread)."""
    start_http_server(port, addr=host)
