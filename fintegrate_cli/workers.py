"""fintegrate relay and fintegrate consume: the outbox relay and the event consumer worker."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Attach this module's commands to the root app."""
