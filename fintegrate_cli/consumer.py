"""`fintegrate consumer`: Create, list, show, disable and enable tenants (consumers), and
rotate their broker credentials."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

import typer

from fintegrate_cli._client import ApiClient, ApiError, api_client
from fintegrate_cli._context import state
from fintegrate_cli._errors import CliError
from fintegrate_cli._output import (
    JsonOption,
    console,
    emit_record,
    emit_rows,
    err_console,
    info,
    wants_json,
)
from service.consumers.broker import tenant_broker_url

app = typer.Typer(
    help="Create, list, show, disable and enable tenants (consumers).", no_args_is_help=True
)

CONSUMERS_PATH = "/consumer/data"
LIST_COLUMNS = ("consumer_id", "name", "status", "queue_name", "created_at")
ConsumerArgument = Annotated[str, typer.Argument(help="Consumer id (UUID) or name.")]
KEY_WARNING = "Store this API key now: it is shown only once and cannot be recovered."
BROKER_WARNING = (
    "Store the broker password now: it is shown only once "
    "(a new one: `fintegrate consumer rotate-broker-credentials NAME`)."
)


def is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def resolve_consumer(client: ApiClient, id_or_name: str) -> dict[str, Any]:
    """The consumer with this id or name, among those the client's key may see."""
    if client.is_admin and is_uuid(id_or_name):
        try:
            return dict(client.get(f"{CONSUMERS_PATH}/{id_or_name}"))
        except ApiError as exc:
            if exc.status_code != 404:
                raise
    else:
        for item in client.all_items(CONSUMERS_PATH):
            if id_or_name in (item.get("name"), item.get("consumer_id")):
                return item
    raise CliError(
        f"no consumer {id_or_name!r} visible with this key; "
        "list them with `fintegrate consumer list`"
    )


def create_consumer(client: ApiClient, name: str, description: str | None) -> dict[str, Any]:
    """Create a tenant; the answer holds its API key (shown once) and queue name."""
    body: dict[str, Any] = {"name": name}
    if description is not None:
        body["description"] = description
    return dict(client.post(CONSUMERS_PATH, json=body))


def set_consumer_status(client: ApiClient, consumer_id: str, status: str) -> dict[str, Any]:
    """Set a consumer active or disabled (a disabled consumer's key is refused)."""
    return dict(client.patch(f"{CONSUMERS_PATH}/{consumer_id}", json={"status": status}))


def rotate_broker_credentials(client: ApiClient, consumer_id: str) -> dict[str, Any]:
    """A new broker password for the tenant (its open broker connections are closed)."""
    return dict(client.post(f"{CONSUMERS_PATH}/{consumer_id}/broker-credentials/rotate"))


def print_broker_login(broker: dict[str, Any], rabbitmq_url: str, as_json: bool) -> None:
    """The tenant's ``FINTEGRATE_RABBITMQ_URL`` alone on one line (people only), and the
    shown-once warning."""
    if not as_json:
        url = tenant_broker_url(rabbitmq_url, broker["username"], broker["password"])
        console.print(
            f"FINTEGRATE_RABBITMQ_URL={url}", soft_wrap=True, markup=False, highlight=False
        )
    err_console.print(f"[bold yellow]{BROKER_WARNING}[/]", soft_wrap=True)


def print_secret_record(record: dict[str, Any], as_json: bool, title: str) -> None:
    """A record holding a freshly issued key, with the shown-once warning on stderr.

    For people the key is also printed alone on one line: a table folds a long value
    across lines, and a key copied from there would be broken.
    """
    emit_record(record, as_json, title)
    if not as_json:
        print_key_line(record["api_key"])
    err_console.print(f"[bold yellow]{KEY_WARNING}[/]", soft_wrap=True)


def print_key_line(api_key: str) -> None:
    """``API key: fk_…`` on stdout, never wrapped, markup and highlighting off."""
    console.print(f"API key: {api_key}", soft_wrap=True, markup=False, highlight=False)


@app.command("create")
def create_command(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Unique tenant name: lowercase a-z, 0-9 and _.")],
    description: Annotated[
        str | None, typer.Option("--description", "-d", help="Free-text description.")
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Create a tenant, its queue and DLQ; print its API key once."""
    cli = state(ctx)
    settings = cli.settings()
    as_json = wants_json(ctx, json_output)
    with api_client(settings, "admin", "consumer create") as client:
        created = create_consumer(client, name, description)
    print_secret_record(created, as_json, f"Consumer {name}")
    if created.get("broker"):
        print_broker_login(created["broker"], settings.broker.url, as_json)
    else:
        info(
            "broker user not created (management API unavailable): run "
            f"`fintegrate consumer rotate-broker-credentials {name}`"
        )
    if created.get("queue_provisioned") is False:
        info(f"queues not provisioned (broker down?): run `fintegrate queues provision {name}`")


@app.command("list")
def list_command(ctx: typer.Context, json_output: JsonOption = False) -> None:
    """List every tenant (operator key) or the key's own tenant (tenant key)."""
    with api_client(state(ctx).settings(), "either", "consumer list") as client:
        items = client.all_items(CONSUMERS_PATH)
    emit_rows(items, LIST_COLUMNS, wants_json(ctx, json_output), "Consumers")


@app.command("show")
def show_command(
    ctx: typer.Context, consumer: ConsumerArgument, json_output: JsonOption = False
) -> None:
    """Show one tenant by id or name."""
    with api_client(state(ctx).settings(), "admin", "consumer show") as client:
        record = resolve_consumer(client, consumer)
    emit_record(record, wants_json(ctx, json_output), f"Consumer {record.get('name', consumer)}")


def change_status(ctx: typer.Context, consumer: str, status: str, as_json: bool) -> None:
    command = "consumer disable" if status == "disabled" else "consumer enable"
    with api_client(state(ctx).settings(), "admin", command) as client:
        target = resolve_consumer(client, consumer)
        updated = set_consumer_status(client, str(target["consumer_id"]), status)
    emit_record(updated, as_json, f"Consumer {updated.get('name', consumer)}")


@app.command("disable")
def disable_command(
    ctx: typer.Context, consumer: ConsumerArgument, json_output: JsonOption = False
) -> None:
    """Disable a tenant: its API key is refused until it is enabled again."""
    change_status(ctx, consumer, "disabled", wants_json(ctx, json_output))


@app.command("enable")
def enable_command(
    ctx: typer.Context, consumer: ConsumerArgument, json_output: JsonOption = False
) -> None:
    """Enable a disabled tenant again."""
    change_status(ctx, consumer, "active", wants_json(ctx, json_output))


@app.command("rotate-broker-credentials")
def rotate_broker_credentials_command(
    ctx: typer.Context, consumer: ConsumerArgument, json_output: JsonOption = False
) -> None:
    """Issue a new broker password for a tenant (created if missing); old sessions close."""
    settings = state(ctx).settings()
    as_json = wants_json(ctx, json_output)
    with api_client(settings, "admin", "consumer rotate-broker-credentials") as client:
        target = resolve_consumer(client, consumer)
        broker = rotate_broker_credentials(client, str(target["consumer_id"]))
    emit_record(broker, as_json, f"Broker login of {target.get('name', consumer)}")
    print_broker_login(broker, settings.broker.url, as_json)
