"""Run an ASGI app with uvicorn in a background thread on a free loopback port."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import uvicorn
from starlette.types import ASGIApp

START_TIMEOUT_SECONDS = 20.0
STOP_TIMEOUT_SECONDS = 10.0


class LiveServer:
    """``start()`` returns once ``/health`` answers; ``stop()`` shuts uvicorn down."""

    def __init__(self, app: ASGIApp) -> None:
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind(("127.0.0.1", 0))
        self.port: int = self.socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True
        )

    def start(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline and self.thread.is_alive():
            try:
                if httpx.get(f"{self.url}/health", timeout=1.0).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"the live server on {self.url} did not become healthy")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(STOP_TIMEOUT_SECONDS)
        self.socket.close()
