"""`fintegrate config`: Show the effective configuration and where each value came from."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import typer
from dotenv import dotenv_values

from fintegrate_cli._context import CliState, state
from fintegrate_cli._output import JsonOption, emit_rows, print_json, wants_json
from service.config import (
    ENV_FILE,
    FLAT_SETTINGS,
    SECRET_FIELDS,
    SECRET_URL_FIELDS,
    Settings,
    env_name,
)

app = typer.Typer(
    help="Show the effective configuration and where each value came from.", no_args_is_help=True
)

MASK = "********"
COLUMNS = ("setting", "variable", "value", "source")


def env_file_path(cli: CliState) -> Path:
    """The .env file the settings were read from: --env-file, else ./.env."""
    return Path(cli.env_file or ENV_FILE)


def read_env_file(path: Path) -> set[str]:
    """Upper-cased names the env file sets (empty when there is no file)."""
    if not path.is_file():
        return set()
    return {name.upper() for name in dotenv_values(path)}


def source_of(setting: str, cli: CliState, file_names: set[str]) -> str:
    """flag > environment > .env file > default, as Settings resolves it."""
    name = env_name(setting)
    if setting in cli.overrides:
        return "flag"
    if name in {key.upper() for key in os.environ}:
        return "environment"
    if name in file_names:
        return ".env file"
    return "default"


def mask_url(url: str) -> str:
    """The URL, or each URL of a comma-separated list, with its password masked.

    Works on the netloc text itself, so a libpq multi-host URL (``h1:5491,h2:5492``) and a
    list of broker nodes are masked too, whatever their ports look like.
    """
    return ",".join(mask_one_url(part) for part in split_url_list(url))


def split_url_list(value: str) -> list[str]:
    """Pieces of ``value`` split at commas that begin a new ``scheme://`` URL."""
    return re.split(r",(?=\s*[A-Za-z][A-Za-z0-9+.-]*://)", value)


def mask_one_url(url: str) -> str:
    scheme, separator, rest = url.partition("://")
    if not separator:
        return url
    end = min((rest.find(c) for c in "/?#" if c in rest), default=len(rest))
    userinfo, at, hosts = rest[:end].rpartition("@")
    user, colon, _password = userinfo.partition(":")
    if not at or not colon:
        return url
    return f"{scheme}://{user}:{MASK}@{hosts}{rest[end:]}"


def masked(setting: str, value: Any) -> Any:
    if value is None:
        return None
    if setting in SECRET_FIELDS:
        return MASK
    if setting in SECRET_URL_FIELDS:
        return mask_url(str(value))
    return value


def by_component() -> list[str]:
    """Flat setting names, those of one component together, in the order of ``Settings``."""
    order = list(Settings.model_fields)
    return sorted(FLAT_SETTINGS, key=lambda setting: order.index(grouped_name(setting)[0]))


def grouped_name(setting: str) -> tuple[str, str]:
    """Where a flat setting lives: (group, dotted name), e.g. ("relay", "relay.batch_size")."""
    group, field = FLAT_SETTINGS[setting]
    return (field, field) if group is None else (group, f"{group}.{field}")


def describe_settings(cli: CliState) -> list[dict[str, Any]]:
    """Each setting by component: dotted name, masked value, source, environment variable."""
    settings = cli.settings()
    file_names = read_env_file(env_file_path(cli))
    return [
        {
            "name": setting,
            "setting": grouped_name(setting)[1],
            "variable": env_name(setting),
            "value": masked(setting, settings.flat_value(setting)),
            "source": source_of(setting, cli, file_names),
        }
        for setting in by_component()
    ]


@app.command("show")
def show_command(ctx: typer.Context, json_output: JsonOption = False) -> None:
    """Each setting by component, its value (secrets masked) and where it came from.

    Sources, strongest first: flag, environment, .env file, default. The JSON is keyed by
    the flat name (the variable without FINTEGRATE_), in the same component order.
    """
    cli = state(ctx)
    rows = describe_settings(cli)
    if wants_json(ctx, json_output):
        print_json(
            {
                row["name"]: {
                    "value": row["value"],
                    "source": row["source"],
                    "env_var": row["variable"],
                }
                for row in rows
            }
        )
        return
    emit_rows(rows, COLUMNS, False, f"Configuration (.env file: {env_file_path(cli)})")
