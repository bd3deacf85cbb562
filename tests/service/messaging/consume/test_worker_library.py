"""The worker library in a bare virtual environment: pika, httpx, pydantic and nothing else.

The environment is made here, offline: ``python -m venv`` without pip, the three
distributions and what they require copied from this test run's own environment (the
files each one's RECORD lists), and the project's packages put on its path as
``pip install --no-deps`` would install them. Then the worker is imported there, and the
example of docs/events.md runs there against the real broker and a live API.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from sqlalchemy import Engine

from service.config import Settings
from service.messaging.messages import message_body
from service.messaging.publish.relay import OutboxRelay
from service.webhooks.delivery.sender import delivery_headers
from service.webhooks.signing import new_secret, secret_bytes
from tests.support.api import (
    assert_envelope,
    create_and_delete_customer,
    create_tenant_over_http,
)
from tests.support.outbox import outbound_event
from tests.support.processes import sigterm_when

ROOT = Path(__file__).resolve().parents[4]
WORKER_REQUIREMENTS = ("pika", "httpx", "pydantic")
PROJECT_PACKAGES = ("service", "fintegrate_cli")  # pyproject's packages.find
# What the platform needs and a tenant's worker must not (the fastapi check also proves the
# environment is bare: it is installed where the tests run).
SERVER_ONLY = (
    "fastapi",
    "starlette",
    "sqlalchemy",
    "psycopg2",
    "asyncpg",
    "redis",
    "pydantic_settings",
    "dotenv",
    "opentelemetry",
    "cryptography",
    "typer",
    "rich",
)
EXAMPLE_HEADING = "## The worker as a library"


def requirement_closure(names: Iterable[str]) -> list[metadata.Distribution]:
    """The installed distributions ``names`` need, their own requirements included."""
    found: dict[str, metadata.Distribution] = {}
    pending = list(names)
    while pending:
        distribution = metadata.distribution(pending.pop())
        key = canonicalize_name(distribution.metadata["Name"])
        if key in found:
            continue
        found[key] = distribution
        for spec in distribution.requires or []:
            requirement = Requirement(spec)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                pending.append(requirement.name)
    return list(found.values())


def copy_distribution(distribution: metadata.Distribution, site: Path) -> None:
    """The files of ``distribution`` (as its RECORD lists them) into ``site``."""
    for file in distribution.files or []:
        if file.parts[0] == ".." or "__pycache__" in file.parts:
            continue  # scripts outside site-packages; bytecode is made again
        source = Path(str(distribution.locate_file(file)))
        target = site / file
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)


def run_bare(python: Path, code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(python), "-I", "-c", code],
        env=bare_environment(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def bare_environment(**extra: str) -> dict[str, str]:
    """This process's environment less PYTHON* (nothing leaks onto the bare path)."""
    kept = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    return {**kept, **extra}


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The interpreter of a venv holding the worker's three dependencies and the project."""
    venv = tmp_path_factory.mktemp("bare") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(python), "-I", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    for distribution in requirement_closure(WORKER_REQUIREMENTS):
        copy_distribution(distribution, site)
    project = venv / "project"
    project.mkdir()
    for package in PROJECT_PACKAGES:
        (project / package).symlink_to(ROOT / package)
    (site / "fintegrate.pth").write_text(f"{project}\n")
    return python


def test_the_worker_imports_with_only_pika_httpx_and_pydantic(bare_python: Path) -> None:
    body, secret = message_body(outbound_event()), new_secret()
    headers = delivery_headers("evt", 1, body, [secret_bytes(secret)], int(time.time()))
    probe = f"""
import importlib.metadata, importlib.util, json, sys
from service.messaging.consume import Worker, WorkerConfig, verify_webhook
from service.kit import tracing
event = verify_webhook({body!r}, {headers!r}, {secret!r})
worker = Worker("acme", WorkerConfig.from_env())
print(json.dumps({{
    "event": event.event_id,
    "prefetch": worker.config.prefetch,
    "tracing": tracing.configure("fintegrate-worker"),
    "loaded": sorted({{name.split(".")[0] for name in sys.modules}}),
    "findable": [n for n in {list(SERVER_ONLY)!r} if importlib.util.find_spec(n)],
    "installed": sorted(d.metadata["Name"].lower() for d in importlib.metadata.distributions()),
}}))
"""
    result = run_bare(
        bare_python,
        probe,
        FINTEGRATE_CONSUMER_PREFETCH="7",
        OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:4318",  # asks for traces: no SDK here
    )
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["findable"] == []
    assert not set(SERVER_ONLY) & set(seen["loaded"])
    assert {"pika", "httpx", "pydantic"} <= set(seen["installed"])
    assert "fastapi" not in seen["installed"] and "cryptography" not in seen["installed"]
    assert (seen["prefetch"], seen["tracing"]) == (7, False)
    assert "tracing stays off" in result.stderr
    assert seen["event"] == json.loads(body)["event_id"]


def test_the_documented_example_runs_there_until_sigterm(
    bare_python: Path, settings: Settings, engine: Engine, live_server: str, tmp_path: Path
) -> None:
    example = tmp_path / "tenant_worker.py"
    example.write_text(documented_example())
    tenant = create_tenant_over_http(live_server, settings.admin_api_key, "doc")
    customer_id = create_and_delete_customer(live_server, tenant["api_key"])
    OutboxRelay(settings, engine, threading.Event()).drain()
    environment = bare_environment(
        FINTEGRATE_API_URL=live_server,
        FINTEGRATE_API_KEY=tenant["api_key"],
        FINTEGRATE_RABBITMQ_URL=settings.rabbitmq_url,
    )
    process = subprocess.Popen(
        [str(bare_python), "-I", str(example)],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stdout, stderr = sigterm_when(process, lambda: delivered(live_server, tenant["api_key"]) == 3)
    assert process.returncode == 0, stderr
    assert stdout.splitlines() == [f"welcome {customer_id}", f"forget {customer_id}"]
    assert "SIGTERM received: finishing the work in hand" in stderr


def test_the_documented_example_serves_a_signed_webhook(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    secret, event = new_secret(), outbound_event()
    monkeypatch.setenv("WEBHOOK_SECRET", secret)
    example = tmp_path / "tenant_worker.py"
    example.write_text(documented_example())
    namespace: dict[str, Any] = {"__name__": "tenant_worker"}
    exec(compile(example.read_text(), str(example), "exec"), namespace)  # noqa: S102
    body = message_body(event)
    headers = delivery_headers(event.event_id, 1, body, [secret_bytes(secret)], int(time.time()))
    namespace["on_webhook"](body, headers)
    assert capsys.readouterr().out == f"welcome {event.customer_id}\n"
    with pytest.raises(ValueError, match="no webhook-signature matches"):
        namespace["on_webhook"](body.replace(b"Ada", b"Eve"), headers)


def documented_example() -> str:
    """The first python block under the library heading of docs/events.md."""
    document = (ROOT / "docs" / "events.md").read_text()
    section = document[document.index(EXAMPLE_HEADING) :]
    found = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert found, f"no python block under {EXAMPLE_HEADING!r} in docs/events.md"
    return found.group(1)


def delivered(api_url: str, api_key: str) -> int:
    """How many of the tenant's events the API lists as delivered."""
    response = httpx.get(
        f"{api_url}/events", params={"deliver_status": "delivered"}, headers={"X-API-Key": api_key}
    )
    count: int = assert_envelope(response, 200)["count"]
    return count
