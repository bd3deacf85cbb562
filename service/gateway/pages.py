"""The gateway's own answers as envelopes: 404, 429, 502, 503 and 504 (SPEC 4.1).

A tiny threaded HTTP server that needs none of the API instances (nor a database): Traefik's
`errors` middleware asks it for ``/_edge/{status}``, unknown paths reach it as
``/_edge/404/<path>`` and the failover sends every request to it when no instance is up.
The 429 is answered by the IP budget plugin itself, with the body rendered here
(``edge_body``, ``too_many``) into its configuration.
Run it alone (the compose stack does) with ``python -m service.gateway.pages``.
"""

from __future__ import annotations

import argparse
import json
import math
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from service.config import GatewaySettings, load_settings
from service.http.envelope import SUCCESS, envelope_body

EDGE_HEADER = "X-Fintegrate-Edge"
EDGE_VALUE = "gateway"
MAX_ECHOED_PATH = 200
READY_PATH = "/_edge/ready"
MAX_DRAINED_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class EdgeLimits:
    """The figures the messages quote: the IP budget, health interval, upstream timeout."""

    rate_per_minute: int
    rate_burst: int
    health_interval_seconds: float
    upstream_timeout_seconds: float

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> EdgeLimits:
        return cls(
            settings.rate_limit_per_minute,
            settings.rate_limit_burst,
            settings.health_interval_seconds,
            settings.upstream_timeout_seconds,
        )

    @property
    def token_seconds(self) -> int:
        """Whole seconds until the budget has one request again (Retry-After of a 429)."""
        return max(1, math.ceil(60 / self.rate_per_minute))


def edge_answer(path: str, limits: EdgeLimits) -> tuple[int, str, dict[str, str]]:
    """``(status, description, extra headers)`` for a request the error pages received."""
    if path == READY_PATH:
        return 200, SUCCESS, {}
    if path.startswith("/_edge/404"):
        asked = path.removeprefix("/_edge/404") or "/"
        return 404, unknown_path(asked[:MAX_ECHOED_PATH]), {}
    if path.startswith("/_edge/502"):
        return 502, BAD_GATEWAY, {}
    if path.startswith("/_edge/504"):
        return 504, timed_out(limits), {}
    wait = max(1, math.ceil(limits.health_interval_seconds))
    return 503, NO_INSTANCE, {"Retry-After": str(wait)}


def edge_body(status: int, description: str) -> bytes:
    """The envelope of one of the gateway's answers, as sent."""
    return json.dumps(envelope_body({}, status, description)).encode()


def unknown_path(path: str) -> str:
    return (
        f"No route for {path}: the gateway serves /customer/..., /consumer/..., /events/..., "
        "/health, /ready, /docs and /openapi.json"
    )


def too_many(limits: EdgeLimits, wait: int) -> str:
    return (
        f"Too many requests from your address: the gateway allows {limits.rate_per_minute} "
        f"requests per minute per client IP across all routes (bursts of {limits.rate_burst}); "
        f"retry after {wait} s"
    )


def timed_out(limits: EdgeLimits) -> str:
    return (
        f"The API instance did not answer within {limits.upstream_timeout_seconds:g} s; "
        "a write may still have happened: check before sending it again"
    )


BAD_GATEWAY = (
    "The API instance dropped or refused the connection; reads are already retried on "
    "another instance, so retry a write only after checking whether it happened"
)
NO_INSTANCE = (
    "No API instance is up: every instance fails its /health check; retry later, and "
    "operators: start an instance (fintegrate serve) or see fintegrate doctor"
)


def handler_for(limits: EdgeLimits) -> type[BaseHTTPRequestHandler]:
    """A request handler class answering every method with the envelope for its path."""

    class EdgePageHandler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "fintegrate-edge"
        sys_version = ""

        def answer(self) -> None:
            self.drain_body()
            status, description, headers = edge_answer(self.path, limits)
            body = edge_body(status, description)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header(EDGE_HEADER, EDGE_VALUE)
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def drain_body(self) -> None:
            """Read the request body so the kept-alive connection stays in step."""
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_DRAINED_BYTES:
                self.close_connection = True
                return
            if length:
                self.rfile.read(length)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = answer  # noqa: N815

        def log_message(self, format: str, *args: object) -> None:
            """Silent: Traefik's access log already has every request."""

    return EdgePageHandler


class EdgePages:
    """The error-page server on ``host:port`` (0 picks a free port), in a daemon thread."""

    def __init__(self, limits: EdgeLimits, host: str = "127.0.0.1", port: int = 0) -> None:
        self.server = ThreadingHTTPServer((host, port), handler_for(limits))
        self.server.daemon_threads = True
        self.port: int = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> EdgePages:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def main() -> None:
    """``python -m service.gateway.pages --host H --port P``: serve until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8082)
    options = parser.parse_args()
    pages = EdgePages(EdgeLimits.from_settings(load_settings().gateway), options.host, options.port)
    try:
        pages.server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        pages.server.server_close()


if __name__ == "__main__":
    main()
