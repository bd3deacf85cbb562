"""An OTLP/HTTP receiver on loopback that accepts every export and discards it.

``fintegrate bench api --tracing`` points a traced API at it: the API then pays everything
tracing costs it (span, batching, protobuf encoding, the HTTP post) while the receiving end
does as little as a collector could. It answers ``POST /v1/traces`` with 200 and an empty
``ExportTraceServiceResponse`` (zero bytes encode an empty protobuf message) and counts
the requests and bytes it got, so a run can show that spans did arrive.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

TRACES_PATH = "/v1/traces"


class OtlpSink:
    """``endpoint`` is the base URL for ``OTEL_EXPORTER_OTLP_ENDPOINT``."""

    def __init__(self) -> None:
        self.exports = 0
        self.bytes = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the exporter's session expects

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                self.rfile.read(length)
                found = self.path == TRACES_PATH
                if found:
                    sink._count(length)
                self.send_response(200 if found else 404)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        return Handler

    def _count(self, length: int) -> None:
        with self._lock:
            self.exports += 1
            self.bytes += length


@contextmanager
def running_sink() -> Iterator[OtlpSink]:
    """A sink serving on a free loopback port until the block ends."""
    sink = OtlpSink()
    thread = threading.Thread(target=sink._server.serve_forever, name="otlp-sink", daemon=True)
    thread.start()
    try:
        yield sink
    finally:
        sink._server.shutdown()
        sink._server.server_close()
        thread.join(10)
