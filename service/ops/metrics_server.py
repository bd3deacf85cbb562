"""Prometheus text on a port of its own, for the long-running processes that are not the API."""

from __future__ import annotations

from prometheus_client import start_http_server


def start_metrics_server(port: int, host: str = "127.0.0.1") -> None:
    """Serve the process's default registry at ``http://host:port/metrics`` (daemon thread).

    Loopback by default: the metrics name tenants' consumers, so exposing them is a choice.
    Raises OSError when the port cannot be bound.
    """
    start_http_server(port, addr=host)
