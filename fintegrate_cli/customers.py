"""`fintegrate customers`: List, show and create customers (tenant API)."""

from __future__ import annotations

import typer

app = typer.Typer(help="List, show and create customers (tenant API).", no_args_is_help=True)
