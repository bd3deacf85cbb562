"""`fintegrate keys`: Rotate, list and revoke tenant API keys."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from fintegrate_cli._client import ApiClient, api_client
from fintegrate_cli._context import state
from fintegrate_cli._errors import CliError
from fintegrate_cli._output import (
    JsonOption,
    confirm,
    emit_record,
    emit_rows,
    info,
    wants_json,
)
from fintegrate_cli.consumer import CONSUMERS_PATH, print_secret_record, resolve_consumer

app = typer.Typer(help="Rotate, list and revoke tenant API keys.", no_args_is_help=True)

KEY_COLUMNS = ("key_id", "key_prefix", "is_active", "created_at", "last_used_at", "revoked_at")
ConsumerArgument = Annotated[str, typer.Argument(help="Consumer id (UUID) or name.")]


def rotate_key(client: ApiClient, consumer_id: str) -> dict[str, Any]:
    """Issue a new key for the consumer; the old one stops working."""
    return dict(client.post(f"{CONSUMERS_PATH}/{consumer_id}/keys/rotate"))


def list_keys(client: ApiClient, consumer_id: str) -> list[dict[str, Any]]:
    """Every key of the consumer, active and revoked, without secrets."""
    return client.all_items(f"{CONSUMERS_PATH}/{consumer_id}/keys")


def find_key(client: ApiClient, consumer: dict[str, Any], key_id: str) -> dict[str, Any]:
    """The consumer's key with this id; a one-line error naming `keys list` otherwise."""
    for key in list_keys(client, str(consumer["consumer_id"])):
        if str(key.get("key_id")) == key_id:
            return key
    raise CliError(
        f"consumer {consumer['name']} has no key {key_id!r}; "
        f"see `fintegrate keys list {consumer['name']}`"
    )


def revoke_key(client: ApiClient, consumer_id: str, key_id: str) -> dict[str, Any]:
    """Revoke one key of the consumer."""
    return dict(client.post(f"{CONSUMERS_PATH}/{consumer_id}/keys/{key_id}/revoke"))


@app.command("rotate")
def rotate_command(
    ctx: typer.Context, consumer: ConsumerArgument, json_output: JsonOption = False
) -> None:
    """Issue a new API key (operator or the tenant itself) and print it once."""
    settings = state(ctx).settings()
    with api_client(settings, "either", "keys rotate") as client:
        target = resolve_consumer(client, consumer)
        rotated = rotate_key(client, str(target["consumer_id"]))
    print_secret_record(rotated, wants_json(ctx, json_output), f"New key for {target['name']}")
    if not client.is_admin:
        info("The key this command used no longer works: update FINTEGRATE_API_KEY.")


@app.command("list")
def list_command(
    ctx: typer.Context, consumer: ConsumerArgument, json_output: JsonOption = False
) -> None:
    """List a tenant's keys (prefix and dates only; secrets are never stored)."""
    with api_client(state(ctx).settings(), "admin", "keys list") as client:
        target = resolve_consumer(client, consumer)
        keys = list_keys(client, str(target["consumer_id"]))
    emit_rows(keys, KEY_COLUMNS, wants_json(ctx, json_output), f"Keys of {target['name']}")


@app.command("revoke")
def revoke_command(
    ctx: typer.Context,
    consumer: ConsumerArgument,
    key_id: Annotated[str, typer.Argument(help="The key_id to revoke (see `keys list`).")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show the key that would be revoked; change nothing.")
    ] = False,
    json_output: JsonOption = False,
) -> None:
    """Revoke one key: requests with it are refused from then on."""
    cli = state(ctx)
    as_json = wants_json(ctx, json_output)
    with api_client(cli.settings(), "admin", "keys revoke") as client:
        target = resolve_consumer(client, consumer)
        key = find_key(client, target, key_id)
        if dry_run:
            emit_record({**key, "action": "revoke", "dry_run": True}, as_json, "Would revoke")
            info("dry run: nothing changed", cli.quiet)
            return
        confirm(f"Revoke key {key_id} of consumer {target['name']}?", yes)
        revoked = revoke_key(client, str(target["consumer_id"]), key_id)
    emit_record(revoked, as_json, f"Revoked key of {target['name']}")
