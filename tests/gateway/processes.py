"""Real processes for the gateway tests: API instances (`fintegrate serve`) and clients."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import httpx

from service.config import Settings
from service.gateway.runner import Gateway
from tests.support.live_server import wait_healthy
from tests.support.ports import free_port
from tests.support.processes import FINTEGRATE, process_environment

START_TIMEOUT_SECONDS = 60.0


class ApiInstance:
    """One `fintegrate serve` process on a free loopback port; its log in ``log_path``."""

    def __init__(self, settings: Settings, log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.settings = settings
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ApiInstance:
        command = [FINTEGRATE, "serve", "--port", str(self.port), "--log-level", "info"]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command,
                env=process_environment(self.settings),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        process = self.process
        if wait_healthy(self.url, lambda: process.poll() is None, START_TIMEOUT_SECONDS):
            return self
        self.stop()
        raise RuntimeError(f"API instance on {self.url} did not start:\n{self.log()[-3000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL: the instance dies without closing anything."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def client_from(source: str, base_url: str) -> httpx.Client:
    """An HTTP client whose connections leave from loopback address ``source`` (127.0.0.x)."""
    transport = httpx.HTTPTransport(local_address=source)
    return httpx.Client(base_url=base_url, transport=transport, timeout=30.0)


# The gateway fixtures' factories: a Gateway, an API instance.
GatewayFactory = Callable[..., Gateway]
InstanceFactory = Callable[..., ApiInstance]
