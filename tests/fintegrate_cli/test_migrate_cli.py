"""`fintegrate migrate` through the real CLI app, against fresh PostgreSQL databases."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine
from typer.testing import CliRunner, Result

from fintegrate_cli.main import app
from service.migrations import runner as migrations
from tests.support.cli import one_error_line
from tests.support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.usefixtures("clean_env")  # no FINTEGRATE_* or ./.env leaks in


@pytest.fixture
def database_url(database_factory: Callable[[], str]) -> str:
    return database_factory()


@pytest.fixture
def migration_dir(tmp_path: Path) -> Path:
    target = tmp_path / "migrations"
    shutil.copytree(migrations.MIGRATIONS_DIR, target)
    return target


def fintegrate(database_url: str, *args: str) -> Result:
    return CliRunner().invoke(app, ["--database-url", database_url, *args])


def status_json(database_url: str, *extra: str) -> list[dict[str, str]]:
    result = fintegrate(database_url, "migrate", "status", "--json", *extra)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_apply_then_status_lists_every_file_applied(database_url: str) -> None:
    result = fintegrate(database_url, "migrate", "apply")
    assert result.exit_code == 0, result.output
    assert "migration(s) applied; database is up to date" in result.stderr
    states = status_json(database_url)
    assert [s["filename"] for s in states] == [f.filename for f in migrations.discover()]
    assert {s["state"] for s in states} == {"applied"}
    again = fintegrate(database_url, "migrate", "apply", "--json")
    assert json.loads(again.stdout) == {"applied": []}


def test_status_exit_code_is_3_while_something_is_pending(database_url: str) -> None:
    pending = fintegrate(database_url, "migrate", "status", "--exit-code")
    assert pending.exit_code == 3
    assert "not applied cleanly" in pending.stderr
    fintegrate(database_url, "migrate", "apply")
    clean = fintegrate(database_url, "migrate", "status", "--exit-code")
    assert clean.exit_code == 0, clean.output


def test_apply_to_stops_at_the_version(database_url: str) -> None:
    files = migrations.discover()
    result = fintegrate(database_url, "migrate", "apply", "--to", files[0].version, "--json")
    assert [row["version"] for row in json.loads(result.stdout)["applied"]] == [files[0].version]
    assert [s["state"] for s in status_json(database_url)].count("pending") == len(files) - 1


def test_dry_run_prints_the_plan_and_changes_nothing(database_url: str) -> None:
    result = fintegrate(database_url, "migrate", "apply", "--dry-run")
    assert result.exit_code == 0, result.output
    assert f"{len(migrations.discover())} migration(s) would be applied" in result.stderr
    assert "nothing changed" in result.stderr
    assert migrations.discover()[0].version in result.stdout
    planned = json.loads(fintegrate(database_url, "migrate", "apply", "--dry-run", "--json").stdout)
    assert [p["filename"] for p in planned] == [f.filename for f in migrations.discover()]
    assert {s["state"] for s in status_json(database_url)} == {"pending"}


def test_verify_names_a_drifted_file(database_url: str, migration_dir: Path) -> None:
    fintegrate(database_url, "migrate", "apply", "--dir", str(migration_dir))
    ok = fintegrate(database_url, "migrate", "verify", "--dir", str(migration_dir))
    assert ok.exit_code == 0, ok.output
    drifted = sorted(migration_dir.glob("*.sql"))[2]
    drifted.write_text(drifted.read_text().replace("IF NOT EXISTS", "if not exists", 1))
    result = fintegrate(database_url, "migrate", "verify", "--dir", str(migration_dir))
    assert result.exit_code == 1
    assert f"{drifted.name} (changed)" in result.stderr
    warned = fintegrate(database_url, "migrate", "apply", "--dir", str(migration_dir))
    assert warned.exit_code == 0
    diagnostics = " ".join(warned.stderr.split())  # Rich folds long stderr lines
    assert f"warning: applied migrations differ from their files: {drifted.name}" in diagnostics


def test_verify_json_reports_a_missing_file(database_url: str, migration_dir: Path) -> None:
    fintegrate(database_url, "migrate", "apply", "--dir", str(migration_dir))
    gone = sorted(migration_dir.glob("*.sql"))[-1]
    gone.unlink()
    result = fintegrate(database_url, "migrate", "verify", "--json", "--dir", str(migration_dir))
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["ok"] is False
    assert [(p["filename"], p["state"]) for p in report["problems"]] == [(gone.name, "missing")]


def test_new_writes_a_template_in_the_directory(database_url: str, tmp_path: Path) -> None:
    result = fintegrate(database_url, "migrate", "new", "Add widget table", "--dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    path = Path(result.stdout.strip())
    assert path.parent == tmp_path
    assert migrations.FILENAME_PATTERN.match(path.name)
    assert path.name.endswith("_add_widget_table.sql")
    assert "BEGIN;" in path.read_text() and "COMMIT;" in path.read_text()


def test_new_refuses_a_version_clash(database_url: str, tmp_path: Path) -> None:
    now = datetime.now(UTC)
    for moment in (now, now + timedelta(minutes=1)):  # whichever minute the command sees
        (tmp_path / f"{moment:%Y%m%d_%H%M}_taken.sql").write_text("BEGIN;\nCOMMIT;\n")
    result = fintegrate(database_url, "migrate", "new", "another", "--dir", str(tmp_path))
    assert result.exit_code == 1
    assert "already exists" in result.stderr
    assert len(list(tmp_path.glob("*.sql"))) == 2


def test_broken_migration_is_one_error_line(database_url: str, migration_dir: Path) -> None:
    (migration_dir / "20991231_2359_broken.sql").write_text("BEGIN;\nSELECT nope FROM nowhere;\n")
    result = fintegrate(database_url, "migrate", "apply", "--dir", str(migration_dir))
    assert result.exit_code == 1
    assert one_error_line(result).startswith("Error: 20991231_2359_broken.sql: statement 1 failed")


@pytest.mark.parametrize("command", [["apply"], ["status"], ["verify"], ["apply", "--dry-run"]])
def test_database_down_is_one_line_and_exit_1(
    tcp_proxy_factory: Callable[[str, int], TcpProxy],
    pg_admin_engine: Engine,
    database_url: str,
    command: list[str],
) -> None:
    proxy = tcp_proxy_factory("127.0.0.1", pg_admin_engine.url.port or 5432)
    proxy.refuse()
    result = fintegrate(proxy.url_for(database_url), "migrate", *command)
    assert result.exit_code == 1
    assert "database unreachable" in one_error_line(result)


def test_wait_gives_up_with_one_line(
    tcp_proxy_factory: Callable[[str, int], TcpProxy],
    pg_admin_engine: Engine,
    database_url: str,
) -> None:
    proxy = tcp_proxy_factory("127.0.0.1", pg_admin_engine.url.port or 5432)
    proxy.refuse()
    result = fintegrate(proxy.url_for(database_url), "migrate", "apply", "--wait", "1")
    assert result.exit_code == 1
    assert one_error_line(result).startswith("Error: database not reachable after 1s")
