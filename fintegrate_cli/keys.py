"""`fintegrate keys`: Rotate, list and revoke tenant API keys."""

from __future__ import annotations

import typer

app = typer.Typer(help="Rotate, list and revoke tenant API keys.", no_args_is_help=True)
