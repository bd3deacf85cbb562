"""`fintegrate config`: Show the effective configuration and where each value came from."""

from __future__ import annotations

import typer

app = typer.Typer(
    help="Show the effective configuration and where each value came from.", no_args_is_help=True
)
