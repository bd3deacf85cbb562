"""fintegrate demo: a newcomer's first five minutes on a running stack."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Attach this module's commands to the root app."""
