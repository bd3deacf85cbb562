"""Global options shared by every command (set on the root callback)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import typer

from service.config import Settings, load_settings


@dataclass
class CliState:
    """What the root callback parsed: setting overrides and output switches."""

    overrides: dict[str, Any] = field(default_factory=dict)
    env_file: str | None = None
    json: bool = False
    debug: bool = False
    quiet: bool = False
    _settings: Settings | None = None

    def settings(self) -> Settings:
        """Settings with flag > environment > .env > default precedence."""
        if self._settings is None:
            self._settings = load_settings(self.env_file, **self.overrides)
        return self._settings


def state(ctx: typer.Context) -> CliState:
    """The CliState of this invocation (a default one when called without the root)."""
    root = ctx.find_root()
    if not isinstance(root.obj, CliState):
        root.obj = CliState()
    return root.obj
