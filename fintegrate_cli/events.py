"""`fintegrate events`: List, show, resend, redeliver events and show delivery stats."""

from __future__ import annotations

import typer

app = typer.Typer(
    help="List, show, resend, redeliver events and show delivery stats.", no_args_is_help=True
)
