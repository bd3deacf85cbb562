"""Top-level commands: serve, relay, consume, doctor, demo."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Attach the top-level commands to the root app."""
