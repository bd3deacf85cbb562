"""The CLI calls service functions or the API, never a repository or raw SQL."""

from __future__ import annotations

import ast
from pathlib import Path

CLI = Path(__file__).resolve().parents[2] / "fintegrate_cli"
# Modules holding SQL; the relay's own (messaging.leases) is listed in docs/ARCHITECTURE.md.
SQL_MODULES = ("repository", "service.events.stats", "service.events.outbox")


def imported(path: Path) -> set[str]:
    """Every module and ``module.name`` the file imports."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_no_cli_module_imports_a_repository_or_sql() -> None:
    offending = {
        f"{path.name}: {name}"
        for path in CLI.glob("*.py")
        for name in imported(path)
        if name == "sqlalchemy.text"
        or any(name.endswith(sql) or f"{sql}." in name for sql in SQL_MODULES)
    }
    assert not offending, sorted(offending)
