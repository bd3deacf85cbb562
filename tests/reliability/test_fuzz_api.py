"""Schemathesis against /openapi.json of a live API: every check, over 1,000 generated cases.

Three runs against one server on a database of its own: first every operation a tenant may
call, with a real tenant key (a huge per-consumer rate limit, so no 429 hides anything);
then the operations either may call with both keys configured (schemathesis sends both, and
its ignored_auth check replaces them with invalid ones: fail closed must refuse); then
every operation the operator may call, with the admin key. The order matters: the
admin run may disable or rotate the fuzz tenant (schemathesis finds its id in listings
and follows inferred links), which would otherwise turn the tenant run into 401s. The only
tenant operation left to the admin run is rotating a key (a tenant rotating its own key
mid-run would do the same); tests/service/test_api_auth.py covers the tenant side of it.

Opaque cursors are the one documented exception to "schema-valid means accepted": any
string fits the schema, but only a ``next_cursor`` the server made decodes, so 400 is the
right answer to a forged one (positive_data_acceptance is told so for those operations).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.config import Settings
from tests.reliability.probes import report_figures

pytestmark = pytest.mark.slow

SCHEMATHESIS = str(Path(sys.executable).with_name("schemathesis"))
MAX_EXAMPLES = 30
SEED = int(os.environ.get("FINTEGRATE_FUZZ_SEED", "20261126"))  # vary it to explore
RUN_TIMEOUT_SECONDS = 270
MIN_CASES = 1000
ADMIN_ONLY = (
    "POST /consumer/data",
    "GET /consumer/data/{consumer_id}",
    "PATCH /consumer/data/{consumer_id}",
    "GET /consumer/data/{consumer_id}/keys",
    "POST /consumer/data/{consumer_id}/keys/{key_id}/revoke",
    "POST /consumer/data/{consumer_id}/broker-credentials/rotate",
)
EITHER = (
    "GET /consumer/data",
    "POST /consumer/data/{consumer_id}/keys/rotate",
    "POST /events/resend",
    "POST /events/redeliver",
)
ROTATE = "POST /consumer/data/{consumer_id}/keys/rotate"
WITH_CURSOR = (
    "GET /consumer/data",
    "GET /customer/data",
    "GET /customer/data/{customer_id}/analytics",
    "GET /events",
    "GET /events/lost",
    "POST /events/resend",
    "POST /events/redeliver",
)
POSITIVE_EXPECTED = ["2xx", "3xx", "401", "403", "404", "409", "429", "5xx"]


@pytest.fixture
def stack_settings(isolated_settings: Settings) -> Settings:
    """The API (``api_url``) on its own database; failed-auth throttling off (ignored_auth
    sends bad keys)."""
    return isolated_settings.model_copy(update={"failed_auth_limit": 1_000_000})


@pytest.fixture
def fuzz_tenant_key(api_url: str, isolated_settings: Settings) -> str:
    assert isolated_settings.admin_api_key
    response = httpx.post(
        f"{api_url}/consumer/data",
        json={"name": "fuzz", "rate_limit_per_minute": 1_000_000, "rate_limit_burst": 1_000_000},
        headers={"X-Admin-Key": isolated_settings.admin_api_key},
        timeout=10,
    )
    assert response.status_code == 201, response.text
    key: str = response.json()["data"]["api_key"]
    return key


def operation_names(url: str) -> set[str]:
    schema = httpx.get(f"{url}/openapi.json", timeout=10).json()
    return {f"{method.upper()} {path}" for path, ops in schema["paths"].items() for method in ops}


def config_text(keys: dict[str, str], disabled: list[str]) -> str:
    """A schemathesis.toml: API key schemes, operations left out, the cursor exception."""
    lines = []
    for scheme, key in keys.items():
        lines += [f"[auth.openapi.{scheme}]", f"api_key = {json.dumps(key)}"]
    if disabled:
        lines += ["[[operations]]", f"include-name = {json.dumps(disabled)}", "enabled = false"]
    lines += [
        "[[operations]]",
        f"include-name = {json.dumps(list(WITH_CURSOR))}",
        "checks.positive_data_acceptance.expected-statuses = "
        + json.dumps([*POSITIVE_EXPECTED, "400"]),
    ]
    return "\n".join(lines) + "\n"


def run_schemathesis(url: str, config: str, workdir: Path) -> dict[str, Any]:
    """One ``schemathesis run`` with every check; its JSON report (stdout on failure)."""
    workdir.mkdir()
    (workdir / "schemathesis.toml").write_text(config)
    report = workdir / "report.json"
    command = [SCHEMATHESIS, "--config-file", "schemathesis.toml", "run", f"{url}/openapi.json"]
    command += ["--checks", "all", "--max-examples", str(MAX_EXAMPLES), "--seed", str(SEED)]
    # An Idempotency-Key the generator reuses replays the first create: the customer it
    # answers may have been deleted since, which ST302 ("created resource not found")
    # reports. That replay is the documented contract (docs/api.md), so only that check
    # is left out; every other one runs.
    command += ["--exclude-checks", "ensure_resource_availability"]
    command += ["--workers", "1", "--no-color", "--report", "json"]
    command += ["--report-json-path", str(report), "--generation-database", "none"]
    result = subprocess.run(
        command, cwd=workdir, capture_output=True, text=True, timeout=RUN_TIMEOUT_SECONDS
    )
    (workdir / "output.txt").write_text(result.stdout + result.stderr)
    assert report.exists(), result.stdout[-3000:] + result.stderr[-3000:]
    outcome: dict[str, Any] = json.loads(report.read_text())
    outcome["output_tail"] = result.stdout[-6000:]
    return outcome


def assert_clean(outcome: dict[str, Any]) -> None:
    """No failure of any check, no error, every selected operation tested, auth working."""
    tail = outcome["output_tail"]
    assert outcome["complete"] and outcome["stop_reason"] == "completed", tail
    assert outcome["failures"] == [], tail
    assert outcome["errors"] == [], tail
    assert outcome["operations"]["tested"] == outcome["operations"]["selected"], tail
    assert outcome["warnings"]["missing_auth"] == [], tail


def test_schemathesis_finds_no_server_error_and_no_schema_violation(
    api_url: str, fuzz_tenant_key: str, isolated_settings: Settings, tmp_path: Path
) -> None:
    assert isolated_settings.admin_api_key
    every = operation_names(api_url)
    tenant_disabled = sorted({*ADMIN_ONLY, ROTATE})
    admin_disabled = sorted(every - {*ADMIN_ONLY, *EITHER})
    both_disabled = sorted(every - set(EITHER) | {ROTATE})
    assert {*ADMIN_ONLY, *EITHER} <= every  # the lists above name real operations

    admin_key = isolated_settings.admin_api_key
    tenant = run_schemathesis(
        api_url, config_text({"TenantKey": fuzz_tenant_key}, tenant_disabled), tmp_path / "t"
    )
    both = run_schemathesis(
        api_url,
        config_text({"TenantKey": fuzz_tenant_key, "AdminKey": admin_key}, both_disabled),
        tmp_path / "b",
    )
    admin = run_schemathesis(
        api_url, config_text({"AdminKey": admin_key}, admin_disabled), tmp_path / "a"
    )

    assert_clean(tenant)
    assert_clean(both)  # ignored_auth: a wrong key beside a valid one is refused (fail closed)
    assert_clean(admin)
    assert both["operations"]["tested"] == len(EITHER) - 1
    tested = tenant["operations"]["tested"] + admin["operations"]["tested"]
    assert tested == len(every) + len(EITHER) - 1  # every operation, both ways where allowed
    cases = tenant["test_cases"]["generated"] + admin["test_cases"]["generated"]
    assert cases >= MIN_CASES
    report_figures(
        "schemathesis",
        operations=len(every),
        cases_tenant=tenant["test_cases"]["generated"],
        cases_admin=admin["test_cases"]["generated"],
        cases_both_keys=both["test_cases"]["generated"],
        seconds=round(tenant["running_time"] + admin["running_time"], 1),
        seed=SEED,
        failures=0,
    )
