"""`fintegrate consumer`: Create, list, show, disable and enable tenants (consumers)."""

from __future__ import annotations

import typer

app = typer.Typer(
    help="Create, list, show, disable and enable tenants (consumers).", no_args_is_help=True
)
