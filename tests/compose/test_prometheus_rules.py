"""compose/prometheus and compose/grafana: promtool validates the rules, their unit tests
and the scrape configuration; the scrape targets and the dashboard match the stack."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "compose" / "prometheus"
GRAFANA_DIR = ROOT / "compose" / "grafana"
COMPOSE_FILE = ROOT / "compose" / "docker-compose.yml"
FAMILY = re.compile(r"\bfintegrate_[a-z_]+")
SERVED_FAMILIES = {
    "fintegrate_outbox_pending_events",
    "fintegrate_outbox_oldest_pending_seconds",
    "fintegrate_relay_published_total",
    "fintegrate_event_delivery_seconds_bucket",
    "fintegrate_dlq_messages",
    "fintegrate_relay_partitions_owned",
    "fintegrate_webhook_attempts_total",
    "fintegrate_ratelimit_fail_open_total",
    "fintegrate_http_requests_total",
}


def promtool(*args: str) -> str:
    """Run promtool in compose/prometheus; fail with its output when it disagrees."""
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail("promtool is required: run scripts/prepare_services.sh (Debian's prometheus)")
    done = subprocess.run(
        [binary, *args], cwd=PROMETHEUS_DIR, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict)
    return data


def test_alert_rules_are_valid() -> None:
    assert "SUCCESS: 5 rules found" in promtool("check", "rules", "alerts.yml")


def test_alert_rules_pass_their_unit_tests() -> None:
    assert "SUCCESS" in promtool("test", "rules", "alerts.test.yml")


def test_scrape_configuration_is_valid() -> None:
    assert "is valid prometheus config" in promtool("check", "config", "prometheus.yml")


def test_every_required_alert_exists() -> None:
    rules = load(PROMETHEUS_DIR / "alerts.yml")["groups"][0]["rules"]
    expressions = {rule["alert"]: rule["expr"] for rule in rules}
    assert (
        "fintegrate_outbox_oldest_pending_seconds) > 60"
        in expressions["FintegrateOutboxEventWaiting"]
    )
    assert "fintegrate_dlq_messages) > 0" in expressions["FintegrateDeadLetters"]
    assert "fintegrate_relay_partitions_owned" in expressions["FintegrateNoRelayHoldsPartitions"]
    assert "histogram_quantile(0.99" in expressions["FintegrateDeliverySlow"]
    assert "fintegrate_ratelimit_fail_open_total" in expressions["FintegrateRateLimitFailingOpen"]


def test_every_process_of_the_stack_is_scraped_on_its_metrics_port() -> None:
    services = load(COMPOSE_FILE)["services"]
    jobs = {
        job["job_name"]: job["static_configs"][0]["targets"]
        for job in load(PROMETHEUS_DIR / "prometheus.yml")["scrape_configs"]
    }
    assert jobs["api"] == ["customer-service-1:8000", "customer-service-2:8000"]
    pairs = (
        ("relay", "relay"),
        ("worker", "event-consumer"),
        ("maintain", "maintain"),
        ("webhooks", "webhooks-deliver"),
    )
    for job, service in pairs:
        [target] = jobs[job]
        host, port = target.split(":")
        command = services[host]["command"]
        assert host == service
        assert command[command.index("--metrics-port") + 1] == port
        assert command[command.index("--metrics-host") + 1] == "0.0.0.0"
    assert services["prometheus"]["volumes"][0].startswith("./prometheus:")


def test_dashboard_queries_only_families_the_processes_serve() -> None:
    dashboard = json.loads((GRAFANA_DIR / "dashboards" / "fintegrate.json").read_text())
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    used = {name for expr in expressions for name in FAMILY.findall(expr)}
    assert used <= SERVED_FAMILIES, used - SERVED_FAMILIES
    assert SERVED_FAMILIES - {"fintegrate_http_requests_total"} <= used
    source = load(GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml")
    assert source["datasources"][0]["uid"] == dashboard["panels"][0]["datasource"]["uid"]
