"""Top-level commands (serve, gateway, relay, consume, maintain, doctor, demo), each from its own
module."""

from __future__ import annotations

import typer

from fintegrate_cli import demo, doctor, gateway, maintain, server, workers


def register(app: typer.Typer) -> None:
    """Attach the top-level commands to the root app."""
    for module in (server, gateway, workers, maintain, doctor, demo):
        module.register(app)
