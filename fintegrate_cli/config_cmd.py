"""`fintegrate config`: Show the effective configuration and where each value came from."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import typer
from dotenv import dotenv_values

from fintegrate_cli._context import CliState, state
from fintegrate_cli._output import JsonOption, emit_rows, print_json, wants_json
from service.config import SECRET_FIELDS, SECRET_URL_FIELDS, Settings

app = typer.Typer(
    help="Show the effective configuration and where each value came from.", no_args_is_help=True
)

ENV_PREFIX = "FINTEGRATE_"
MASK = "********"
COLUMNS = ("setting", "value", "source")


def env_var(setting: str) -> str:
    return f"{ENV_PREFIX}{setting.upper()}"


def env_file_path(cli: CliState) -> Path:
    """The .env file the settings were read from: --env-file, else ./.env."""
    default = Settings.model_config.get("env_file") or ".env"
    return Path(cli.env_file or str(default))


def read_env_file(path: Path) -> set[str]:
    """Upper-cased names the env file sets (empty when there is no file)."""
    if not path.is_file():
        return set()
    return {name.upper() for name in dotenv_values(path)}


def source_of(setting: str, cli: CliState, file_names: set[str]) -> str:
    """flag > environment > .env file > default, as Settings resolves it."""
    name = env_var(setting)
    if setting in cli.overrides:
        return "flag"
    if name in {key.upper() for key in os.environ}:
        return "environment"
    if name in file_names:
        return ".env file"
    return "default"


def mask_url(url: str) -> str:
    """The URL with its password replaced by the mask."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit(parts._replace(netloc=f"{user}:{MASK}@{host}{port}"))


def masked(setting: str, value: Any) -> Any:
    if value is None:
        return None
    if setting in SECRET_FIELDS:
        return MASK
    if setting in SECRET_URL_FIELDS:
        return mask_url(str(value))
    return value


def describe_settings(cli: CliState) -> list[dict[str, Any]]:
    """Each setting with its masked value, its source and its environment variable."""
    settings = cli.settings()
    file_names = read_env_file(env_file_path(cli))
    return [
        {
            "setting": setting,
            "value": masked(setting, getattr(settings, setting)),
            "source": source_of(setting, cli, file_names),
            "env_var": env_var(setting),
        }
        for setting in Settings.model_fields
    ]


@app.command("show")
def show_command(ctx: typer.Context, json_output: JsonOption = False) -> None:
    """Each setting, its value (secrets masked) and where it came from.

    Sources, strongest first: flag, environment, .env file, default.
    """
    cli = state(ctx)
    rows = describe_settings(cli)
    if wants_json(ctx, json_output):
        print_json(
            {row["setting"]: {k: v for k, v in row.items() if k != "setting"} for row in rows}
        )
        return
    emit_rows(rows, COLUMNS, False, f"Configuration (.env file: {env_file_path(cli)})")
