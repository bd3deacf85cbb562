"""The one output layer: a Rich table for people, JSON for scripts (data on stdout)."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from fintegrate_cli._context import state
from fintegrate_cli._errors import EXIT_USAGE, CliError

console = Console()
err_console = Console(stderr=True)


def print_json(data: Any) -> None:
    """Data as JSON on stdout, nothing else."""
    console.file.write(json.dumps(data, indent=2, default=str, sort_keys=False) + "\n")
    console.file.flush()


def render_cell(value: Any) -> Text:
    """A value as plain text (data is never read as Rich markup)."""
    if value is None:
        return Text("-")
    if isinstance(value, Mapping | list):
        return Text(json.dumps(value, default=str))
    return Text(str(value))


def print_table(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[str], title: str | None = None
) -> None:
    """Rows as a Rich table with the given columns."""
    table = Table(title=title, show_lines=False)
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(render_cell(row.get(column)) for column in columns))
    console.print(table)


def print_record(record: Mapping[str, Any], title: str | None = None) -> None:
    """One object as a two-column field/value table."""
    table = Table(title=title, show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for key, value in record.items():
        table.add_row(key, render_cell(value))
    console.print(table)


def emit_rows(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str],
    as_json: bool,
    title: str | None = None,
    json_data: Any = None,
) -> None:
    """A listing: JSON (``json_data`` or the rows) for scripts, a table for people."""
    if as_json:
        print_json(list(rows) if json_data is None else json_data)
    else:
        print_table(rows, columns, title)


def emit_record(record: Mapping[str, Any], as_json: bool, title: str | None = None) -> None:
    """One object: JSON for scripts, a field/value table for people."""
    if as_json:
        print_json(record)
    else:
        print_record(record, title)


def info(message: str, quiet: bool = False) -> None:
    """A diagnostic line on stderr (suppressed by -q)."""
    if not quiet:
        err_console.print(message, soft_wrap=True)


JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]


def wants_json(ctx: typer.Context, flag: bool) -> bool:
    """True when this command's ``--json`` or the root ``--json`` was given."""
    return flag or state(ctx).json


def confirm(question: str, yes: bool) -> None:
    """Go on with ``--yes`` or when the person at the terminal agrees; otherwise stop.

    Without a terminal and without ``--yes`` this is a usage error (exit 2), never a silent go.
    """
    if yes:
        return
    if not sys.stdin.isatty():
        raise CliError(f"{question} Not a terminal: pass --yes to confirm.", EXIT_USAGE)
    if not typer.confirm(question, default=False, err=True):
        raise typer.Abort()
