"""Reading what a ``fintegrate`` run printed (the CLI tests' ``run_cli`` result)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from typer.testing import Result

RunCli = Callable[..., Result]


def json_of(result: Result) -> Any:
    """The JSON document on stdout of a successful run."""
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def json_of_partial(result: Result) -> dict[str, object]:
    """The JSON summary `fintegrate demo` printed before its exit-3 verdict."""
    summary: dict[str, object] = json.loads(result.stdout)
    assert summary["consumer"]
    assert str(summary["api_key"]).startswith("fk_")
    return summary


def one_error_line(result: Result) -> str:
    """The single ``Error: ...`` line on stderr (asserts there is exactly one line)."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: "), lines[0]
    assert "Traceback" not in result.stderr
    return lines[0]
