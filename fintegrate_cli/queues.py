"""`fintegrate queues`: Provision tenant queues, show depth, purge, replay dead letters."""

from __future__ import annotations

import typer

app = typer.Typer(
    help="Provision tenant queues, show depth, purge, replay dead letters.", no_args_is_help=True
)
