"""A loopback webhook receiver for the benchmarks: answers 204 and notes arrivals."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def no_key(body: bytes) -> str:
    return ""


class Receiver:
    """``ThreadingHTTPServer`` on 127.0.0.1; counts POSTs and keeps the first arrival
    (wall-clock seconds, as the load generator notes its answers) per ``key_of(body)``."""

    def __init__(self, key_of: Callable[[bytes], str] = no_key) -> None:
        self.count = 0
        self.arrivals: dict[str, float] = {}
        self._lock = threading.Lock()
        self._key_of = key_of
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                receiver.arrived(body, time.time())
                self.send_response(204)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                return

        return Handler

    def arrived(self, body: bytes, at: float) -> None:
        with self._lock:
            self.count += 1
            self.arrivals.setdefault(self._key_of(body), at)

    def arrivals_now(self) -> dict[str, float]:
        """A copy of the arrivals, safe while deliveries keep arriving."""
        with self._lock:
            return dict(self.arrivals)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
