"""The demo's webhook receiver: a loopback HTTP server that checks each signature.

It listens on 127.0.0.1 only, for the demo's own endpoint. Signatures are verified with the
Standard Webhooks reference library (``standardwebhooks``) when it is installed (the dev
extra); without it the receiver records deliveries as unverified.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MAX_BODY_BYTES = 1024 * 1024


def load_verifier(secret: str) -> Any | None:
    """A ``standardwebhooks.Webhook`` for ``secret``, or None when the library is absent."""
    try:
        from standardwebhooks.webhooks import Webhook  # optional: the dev extra
    except ImportError:
        return None
    return Webhook(secret)


class DemoReceiver:
    """Records ``event_id -> verified`` for every POST it gets; answers 204."""

    def __init__(self) -> None:
        self.deliveries: dict[str, bool] = {}
        self.verifier: Any | None = None
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="demo-receiver", daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/fintegrate-demo"

    def start(self) -> DemoReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def received(self) -> dict[str, bool]:
        with self._lock:
            return dict(self.deliveries)

    def record(self, body: bytes, headers: dict[str, str]) -> None:
        verified = False
        if self.verifier is not None:
            try:
                self.verifier.verify(body, headers)
                verified = True
            except Exception:  # the library raises its own error type on a bad signature
                verified = False
        with self._lock:
            self.deliveries[headers.get("webhook-id", "?")] = verified

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = min(int(self.headers.get("content-length", "0")), MAX_BODY_BYTES)
                body = self.rfile.read(length)
                receiver.record(body, {k.lower(): v for k, v in self.headers.items()})
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return

        return Handler
