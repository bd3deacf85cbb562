"""Fintegrate commands as real OS processes: environment, start, SIGKILL, SIGTERM, logs.

Every process gets the test's settings through ``FINTEGRATE_*`` variables (the same
mapping ``fintegrate serve`` hands to its workers), runs in its own session with its
output in a log file, and is ended by its pid only.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from service.config import Settings
from tests.support.live_server import wait_healthy
from tests.support.outbox import wait_until
from tests.support.ports import free_port

FINTEGRATE = str(Path(sys.executable).with_name("fintegrate"))
REPO_ROOT = Path(__file__).resolve().parents[2]
STOP_TIMEOUT_SECONDS = 30.0
START_TIMEOUT_SECONDS = 30.0


def process_environment(settings: Settings, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The current environment without FINTEGRATE_*, plus ``settings`` and ``extra``."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("FINTEGRATE_")}
    environment.update(settings.environment_variables())
    environment["PYTHONPATH"] = str(REPO_ROOT)
    environment.update(extra or {})
    return environment


class FintegrateProcess:
    """``fintegrate <args>`` in a subprocess whose output goes to ``<log_dir>/<name>.log``."""

    def __init__(
        self,
        name: str,
        args: list[str],
        settings: Settings,
        log_dir: Path,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.args = args
        self.environment = process_environment(settings, extra_env)
        self.log_dir = log_dir
        self.log_path = log_dir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> FintegrateProcess:
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [FINTEGRATE, *self.args],
            env=self.environment,
            cwd=self.log_dir,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL, no chance to clean up; waits for the process to be gone."""
        self._signal(signal.SIGKILL)

    def terminate(self) -> int:
        """SIGTERM and wait for a graceful exit (SIGKILL after a bound); the exit code."""
        return self._signal(signal.SIGTERM)

    def wait_for_log(self, text: str, timeout: float = START_TIMEOUT_SECONDS) -> None:
        """Block until ``text`` appears in the log; RuntimeError if the process dies first."""
        deadline = time.monotonic() + timeout
        while text not in self.log_text():
            if not self.alive or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} never logged {text!r}:\n{self.log_text()[-2000:]}")
            time.sleep(0.05)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _signal(self, signum: int) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signum)
        try:
            code = self.process.wait(STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait(STOP_TIMEOUT_SECONDS)
        if self._log is not None:
            self._log.close()
            self._log = None
        return code


def serve_api(
    settings: Settings,
    log_dir: Path,
    name: str = "api",
    log_level: str = "warning",
    extra_env: dict[str, str] | None = None,
) -> tuple[FintegrateProcess, str]:
    """``fintegrate serve`` on a free loopback port; returns it once /health answers."""
    port = free_port()
    args = ["serve", "--port", str(port), "--log-level", log_level]
    api = FintegrateProcess(name, args, settings, log_dir, extra_env).start()
    url = f"http://127.0.0.1:{port}"
    if wait_healthy(url, lambda: api.alive, START_TIMEOUT_SECONDS):
        return api, url
    api.kill()
    raise RuntimeError(f"fintegrate serve did not come up on {url}:\n{api.log_text()[-2000:]}")


def sigterm_when(
    process: subprocess.Popen[str], ready: Callable[[], bool], timeout: float = 30.0
) -> tuple[str, str]:
    """SIGTERM ``process`` once ``ready()`` holds; its stdout and stderr once it has exited.

    Fails when ``ready`` never holds; the process is killed if it is still running then.
    """
    try:
        assert wait_until(ready, timeout=timeout), "the process never got ready"
        process.send_signal(signal.SIGTERM)
        return process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
