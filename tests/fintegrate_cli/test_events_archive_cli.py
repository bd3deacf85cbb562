"""`fintegrate events archive` and `fintegrate customers erase` from the command line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from service.events import partitions
from tests.support.cli import RunCli, json_of
from tests.support.history import load_history


@pytest.fixture
def archive_cli(
    run_cli: RunCli,
    history_engine: Engine,
    monkeypatch: pytest.MonkeyPatch,
) -> RunCli:
    """The CLI on a database with six weeks of history."""
    load_history(history_engine)
    url = history_engine.url.render_as_string(hide_password=False)
    monkeypatch.setenv("FINTEGRATE_DATABASE_URL", url)
    monkeypatch.setenv("FINTEGRATE_ENVIRONMENT", "test")
    return run_cli


def partition_names(engine: Engine) -> list[str]:
    with engine.connect() as connection:
        return [p.name for p in partitions.list_partitions(connection)]


def test_dry_run_previews_and_changes_nothing(
    archive_cli: RunCli,
    history_engine: Engine,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FINTEGRATE_EVENT_DELIVERY_EXPIRY_DAYS", "60")  # nothing expires yet
    before = partition_names(history_engine)
    table = archive_cli(
        "events", "archive", "--older-than", "10", "--to", str(tmp_path), "--dry-run"
    )
    assert table.exit_code == 0, table.stderr
    assert "To archive" in table.stdout and "Kept" in table.stdout
    assert "nothing changed" in table.stderr
    preview = json_of(
        archive_cli(
            "events", "archive", "--older-than", "10", "--to", str(tmp_path), "--dry-run", "--json"
        )
    )
    assert preview["dry_run"] is True and preview["events_to_archive"] > 0
    assert preview["events_kept_not_final"] == 1
    assert partition_names(history_engine) == before and list(tmp_path.iterdir()) == []


def test_the_preview_counts_never_confirmed_events_past_the_expiry_as_to_expire(
    archive_cli: RunCli, tmp_path: Path
) -> None:
    """The 40-day-old event published and never confirmed: past the default 7 days."""
    preview = json_of(
        archive_cli(
            "events", "archive", "--older-than", "10", "--to", str(tmp_path), "--dry-run", "--json"
        )
    )
    assert preview["events_to_expire"] == 1 and preview["events_kept_not_final"] == 0
    assert preview["keep"] == []


def test_archive_without_yes_off_a_terminal_refuses(
    archive_cli: RunCli,
    history_engine: Engine,
    tmp_path: Path,
) -> None:
    before = partition_names(history_engine)
    result = archive_cli("events", "archive", "--older-than", "10", "--to", str(tmp_path))
    assert result.exit_code == 2 and "--yes" in result.stderr
    assert partition_names(history_engine) == before


def test_archive_yes_json_reports_files_and_drops(
    archive_cli: RunCli,
    history_engine: Engine,
    tmp_path: Path,
) -> None:
    result: dict[str, Any] = json_of(
        archive_cli(
            "events", "archive", "--older-than", "10", "--to", str(tmp_path), "--yes", "--json"
        )
    )
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert result["archived_events"] == sum(f["events"] for f in manifest["files"]) > 0
    assert set(result["dropped_partitions"]).isdisjoint(partition_names(history_engine))


@pytest.mark.parametrize(
    ("days", "target", "message"),
    [
        ("0", None, "--older-than must be at least 1 day"),
        ("-3", None, "--older-than must be at least 1 day"),
        ("10", "missing", "does not exist"),
    ],
)
def test_bad_input_is_one_line_and_drops_nothing(
    archive_cli: RunCli,
    history_engine: Engine,
    tmp_path: Path,
    days: str,
    target: str | None,
    message: str,
) -> None:
    before = partition_names(history_engine)
    directory = tmp_path / target if target else tmp_path
    result = archive_cli("events", "archive", "--older-than", days, "--to", str(directory), "--yes")
    assert result.exit_code == 1
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr
    assert partition_names(history_engine) == before
