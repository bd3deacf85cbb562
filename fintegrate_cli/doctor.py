"""fintegrate doctor: check every dependency and report what to fix."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Attach this module's commands to the root app."""
