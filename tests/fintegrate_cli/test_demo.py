"""`fintegrate demo` on a live API, with and without a relay and a worker."""

from __future__ import annotations

import pytest

from service.config import Settings
from tests.support.cli import RunCli, json_of_partial, one_error_line
from tests.support.ports import closed_port


def test_without_a_relay_it_times_out_asking_for_one(run_cli: RunCli, api_env: Settings) -> None:
    result = run_cli("-q", "demo", "--no-worker", "--timeout", "1", "--json")
    assert result.exit_code == 3
    summary = json_of_partial(result)
    assert summary["events"] == 5  # consumer_created, 3 creations, 1 status change
    assert summary["customers"] == 3
    assert summary["delivered"] == 0
    assert "is `fintegrate relay` running?" in one_error_line(result)


def test_with_a_relay_but_no_consumer_it_asks_for_one(
    run_cli: RunCli, api_env: Settings, relay: None
) -> None:
    result = run_cli("-q", "demo", "--no-worker", "--customers", "1", "--timeout", "3", "--json")
    assert result.exit_code == 3
    summary = json_of_partial(result)
    assert summary["events"] == 3
    assert summary["published"] == 3
    assert summary["delivered"] == 0
    assert "run `fintegrate consume`" in one_error_line(result)


def test_missing_admin_key_is_a_usage_error(
    run_cli: RunCli, api_env: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FINTEGRATE_ADMIN_API_KEY")
    result = run_cli("demo")
    assert result.exit_code == 2
    assert "FINTEGRATE_ADMIN_API_KEY" in one_error_line(result)


def test_api_down_is_one_line(run_cli: RunCli, api_env: Settings) -> None:
    result = run_cli("--api-url", f"http://127.0.0.1:{closed_port()}", "demo", "--no-worker")
    assert result.exit_code == 1
    assert "unreachable" in one_error_line(result)


def test_people_get_the_live_table_and_a_summary(run_cli: RunCli, api_env: Settings) -> None:
    result = run_cli("demo", "--no-worker", "--customers", "1", "--timeout", "1")
    assert result.exit_code == 3
    assert "Demo summary" in result.stdout
    assert "consumer_created" in result.stdout
    assert "shown only once" in result.stderr
    [key_line] = [line for line in result.stdout.splitlines() if line.startswith("API key: ")]
    key = key_line.removeprefix("API key: ")
    assert f"Next: FINTEGRATE_API_KEY={key} fintegrate customers list" in result.stderr


def test_everything_comes_back_with_the_in_process_worker(
    run_cli: RunCli, api_env: Settings, relay: None
) -> None:
    result = run_cli("demo", "--customers", "4", "--timeout", "60", "--json")
    assert result.exit_code == 0, result.stderr
    summary = json_of_partial(result)
    assert summary["events"] == summary["published"] == summary["delivered"] == 6
    assert summary["received_by_worker"] == 6
    details = summary["events_detail"]
    assert isinstance(details, list)
    assert sorted(event["event_type"] for event in details) == [
        "consumer_created",
        *["customer_creation"] * 4,
        "customer_status_change",
    ]
