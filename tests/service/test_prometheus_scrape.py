"""A real Prometheus (Debian's binary, loopback, temp config) scrapes the API, relay and worker.

One event goes the whole way (API → relay → worker → receipt), then a PromQL query over
every SPEC 9 family must return data from the process that serves it.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.config import Settings
from tests.support.api import create_tenant_over_http
from tests.support.outbox import wait_until
from tests.support.ports import free_port
from tests.support.processes import FintegrateProcess, serve_api

PROMETHEUS = shutil.which("prometheus")
SCRAPE_DEADLINE_SECONDS = 90.0
FAMILIES = {
    # family: the PromQL that must return at least one sample
    "api": [
        "fintegrate_outbox_pending_events",
        "fintegrate_outbox_oldest_pending_seconds",
        "fintegrate_event_delivery_seconds_count > 0",
        "histogram_quantile(0.99, sum by (le) (fintegrate_event_delivery_seconds_bucket))",
        "fintegrate_webhook_attempts_total",
        "fintegrate_ratelimit_fail_open_total",
    ],
    "relay": [
        'fintegrate_relay_published_total{result="published"} > 0',
        "fintegrate_relay_partitions_owned > 0",
    ],
    "worker": ["fintegrate_dlq_messages"],
}


@pytest.fixture
def running_platform(settings: Settings, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """API, relay and worker processes (metrics on loopback ports), and one tenant."""
    processes: list[FintegrateProcess] = []
    try:
        api, api_url = serve_api(settings, tmp_path)
        processes.append(api)
        tenant = create_tenant_over_http(api_url, settings.auth.admin_api_key, "prom")
        relay_port, worker_port = free_port(), free_port()
        relay = FintegrateProcess(
            "relay", ["relay", "--metrics-port", str(relay_port)], settings, tmp_path
        )
        worker = FintegrateProcess(
            "worker",
            ["consume", "--consumer", tenant["name"], "--metrics-port", str(worker_port)],
            settings,
            tmp_path,
            {"FINTEGRATE_API_KEY": tenant["api_key"], "FINTEGRATE_API_URL": api_url},
        )
        processes += [relay.start(), worker.start()]
        yield {
            "api_url": api_url,
            "tenant": tenant,
            "targets": {
                "api": api_url.removeprefix("http://"),
                "relay": f"127.0.0.1:{relay_port}",
                "worker": f"127.0.0.1:{worker_port}",
            },
            "log_dir": tmp_path,
        }
    finally:
        for process in reversed(processes):
            process.terminate()


@pytest.fixture
def prometheus(running_platform: dict[str, Any], tmp_path: Path) -> Iterator[str]:
    """Prometheus scraping the three processes every second; yields its base URL."""
    if PROMETHEUS is None:
        pytest.fail("Debian's prometheus is required: run scripts/prepare_services.sh")
    config = tmp_path / "prometheus.yml"
    jobs = "".join(
        f"  - job_name: {job}\n    static_configs:\n      - targets: ['{target}']\n"
        for job, target in running_platform["targets"].items()
    )
    config.write_text(f"global:\n  scrape_interval: 1s\nscrape_configs:\n{jobs}")
    port = free_port()
    log = (tmp_path / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        log.close()


def query(prometheus_url: str, promql: str) -> list[dict[str, Any]]:
    """The instant vector of ``promql`` (empty while Prometheus or the data is not there)."""
    try:
        response = httpx.get(f"{prometheus_url}/api/v1/query", params={"query": promql}, timeout=5)
    except httpx.TransportError:
        return []
    if response.status_code != 200:
        return []
    result: list[dict[str, Any]] = response.json()["data"]["result"]
    return result


def test_prometheus_scrapes_every_family_from_api_relay_and_worker(
    running_platform: dict[str, Any], prometheus: str
) -> None:
    tenant = running_platform["tenant"]
    created = httpx.post(
        f"{running_platform['api_url']}/customer/data",
        json={"name": "Ada", "email": "ada@example.com"},
        headers={"X-API-Key": tenant["api_key"]},
        timeout=10,
    )
    assert created.status_code == 201, created.text
    deadline = time.monotonic() + SCRAPE_DEADLINE_SECONDS
    missing: dict[str, str] = {}
    for job, queries in FAMILIES.items():
        for promql in queries:
            scoped = _scoped(promql, job)
            remaining = max(1.0, deadline - time.monotonic())
            if not wait_until(lambda q=scoped: bool(query(prometheus, q)), timeout=remaining):
                missing[job] = scoped
    logs = {p.name: p.read_text()[-1500:] for p in running_platform["log_dir"].glob("*.log")}
    assert not missing, f"no data for {missing}; logs: {logs}"
    dlq = query(prometheus, 'fintegrate_dlq_messages{job="worker"}')
    assert dlq[0]["metric"]["consumer"] == tenant["name"]
    assert float(dlq[0]["value"][1]) == 0.0


def _scoped(promql: str, job: str) -> str:
    """``promql`` limited to one scrape job (the process that must serve the family)."""
    if promql.startswith("histogram_quantile"):
        return promql.replace("_bucket)", f'_bucket{{job="{job}"}})')
    name, _, rest = promql.partition(" ")
    scope = f'job="{job}"'
    name = name.replace("{", "{" + scope + ",") if "{" in name else name + "{" + scope + "}"
    return f"{name} {rest}".strip()
