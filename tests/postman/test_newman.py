"""The Postman collection, run by newman through the gateway (the real Traefik) in front of a
live API on real Postgres/RabbitMQ/Redis, as users run it (docs/gateway.md).

newman comes from the project's ``package.json`` (``scripts/bootstrap.sh`` runs ``npm install``).
A missing newman or node fails these tests; they never skip.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from service.config import Settings
from service.gateway.runner import Gateway, GatewayOptions

REPO = Path(__file__).resolve().parents[2]
NEWMAN = REPO / "node_modules" / ".bin" / "newman"
COLLECTION = REPO / "postman" / "fintegrate.postman_collection.json"
ENVIRONMENT = REPO / "postman" / "fintegrate.postman_environment.json"
NEWMAN_TIMEOUT_SECONDS = 180
VARIABLE_USE = re.compile(r"\{\{(\w+)\}\}")
ENVIRONMENT_ACCESS = re.compile(r'pm\.environment\.(?:get|set)\(\\"(\w+)\\"')
SCHEMA_V21 = "https://schema.getpostman.com/json/collection/v2.1.0/collection.json"


@dataclass(frozen=True)
class RunReport:
    """What a newman run answered: its exit code, output and JSON report's ``run``."""

    returncode: int
    output: str
    run: dict[str, Any]


def load_collection() -> dict[str, Any]:
    collection: dict[str, Any] = json.loads(COLLECTION.read_text())
    return collection


def scripts_of(node: dict[str, Any]) -> str:
    """The ``test`` script source attached to a collection, folder or request."""
    scripts = [e["script"]["exec"] for e in node.get("event", []) if e["listen"] == "test"]
    return "\n".join(line for lines in scripts for line in lines)


def requests_with_scripts(node: dict[str, Any], inherited: str = "") -> list[tuple[str, str]]:
    """Every request as ``(name, test source including the collection/folder scripts)``."""
    source = inherited + "\n" + scripts_of(node)
    if "request" in node:
        return [(node["name"], source)]
    return [pair for child in node["item"] for pair in requests_with_scripts(child, source)]


def expected_counts() -> tuple[int, int]:
    """Requests in the collection and the ``pm.test`` assertions they run (all unconditional)."""
    requests = requests_with_scripts(load_collection())
    return len(requests), sum(source.count("pm.test(") for _, source in requests)


def newman_command() -> Path:
    """The project's newman, or a failed test that says how to install it."""
    if shutil.which("node") is None:
        pytest.fail("node is not on PATH: install Node.js (newman needs it)", pytrace=False)
    if not NEWMAN.exists():
        pytest.fail(
            f"newman is missing at {NEWMAN}: run scripts/bootstrap.sh (npm install) first",
            pytrace=False,
        )
    return NEWMAN


def run_newman(base_url: str, admin_key: str, report: Path) -> RunReport:
    """Runs the collection with its environment; returns the exit code, output and report."""
    command = [
        str(newman_command()),
        "run",
        str(COLLECTION),
        "--environment",
        str(ENVIRONMENT),
        "--env-var",
        f"base_url={base_url}",
        "--env-var",
        f"admin_key={admin_key}",
        "--reporters",
        "cli,json",
        "--reporter-json-export",
        str(report),
        "--color",
        "off",
    ]
    try:
        done = subprocess.run(
            command, cwd=REPO, capture_output=True, text=True, timeout=NEWMAN_TIMEOUT_SECONDS
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"newman did not finish within {NEWMAN_TIMEOUT_SECONDS} s", pytrace=False)
    if not report.exists():
        pytest.fail(f"newman wrote no report (exit {done.returncode}):\n{done.stderr}")
    run: dict[str, Any] = json.loads(report.read_text())["run"]
    return RunReport(done.returncode, done.stdout + done.stderr, run)


def failure_lines(run: dict[str, Any]) -> str:
    return "\n".join(
        f"{failure['source'].get('name')}: {failure['error'].get('message')}"
        for failure in run["failures"]
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Webhooks configured, loopback destinations allowed (the collection's endpoint)."""
    return settings.updated(
        {
            "webhook_encryption_key": "postman-tests-webhook-key-0123456789",
            "webhook_allowed_cidrs": "127.0.0.0/8",
        }
    )


@pytest.fixture
def gateway_url(live_server: str, settings: Settings) -> Iterator[str]:
    """`fintegrate gateway`'s Traefik in front of the live API.

    The burst is raised from 50 so that the collection may grow past one default burst.
    """
    options = GatewayOptions("127.0.0.1", free_port(), (live_server,))
    gateway = Gateway(settings.updated({"gateway_rate_limit_burst": 500}).gateway, options)
    gateway.start()
    yield gateway.url
    gateway.stop()


def test_collection_is_v21_and_every_request_asserts_its_status() -> None:
    collection = load_collection()
    assert collection["info"]["schema"] == SCHEMA_V21
    requests = requests_with_scripts(collection)
    missing = [name for name, source in requests if "pm.response.to.have.status(" not in source]
    assert missing == []
    assert "status_description" in scripts_of(collection)


def test_environment_declares_every_variable_the_collection_uses() -> None:
    environment = json.loads(ENVIRONMENT.read_text())
    declared = {value["key"] for value in environment["values"]}
    text = COLLECTION.read_text()
    used = set(VARIABLE_USE.findall(text)) | set(ENVIRONMENT_ACCESS.findall(text))
    assert {"base_url", "admin_key", "api_key", "consumer_id"} <= declared
    assert used == declared


def test_collection_passes_through_the_gateway(
    gateway_url: str, settings: Settings, tmp_path: Path
) -> None:
    assert settings.auth.admin_api_key
    result = run_newman(gateway_url, settings.auth.admin_api_key, tmp_path / "report.json")
    requests, assertions = expected_counts()
    stats = result.run["stats"]
    assert result.returncode == 0, result.output[-6000:]
    assert result.run["failures"] == [], failure_lines(result.run)
    assert stats["requests"] == {"total": requests, "pending": 0, "failed": 0}
    assert stats["assertions"] == {"total": assertions, "pending": 0, "failed": 0}
    assert assertions > requests * 3


def test_newman_run_fails_when_the_api_refuses_the_flow(live_server: str, tmp_path: Path) -> None:
    result = run_newman(live_server, "not-the-admin-key", tmp_path / "report.json")
    assert result.returncode != 0
    assert result.run["stats"]["assertions"]["failed"] > 0
    assert "Create consumer" in failure_lines(result.run)
