"""`fintegrate customers`: List, show, create and erase customers (tenant API)."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

import typer
from rich.progress import Progress, SpinnerColumn, TextColumn

from fintegrate_cli._client import ApiClient, api_client
from fintegrate_cli._context import state
from fintegrate_cli._output import (
    JsonOption,
    confirm,
    emit_record,
    emit_rows,
    err_console,
    info,
    wants_json,
)

app = typer.Typer(help="List, show, create and erase customers (tenant API).", no_args_is_help=True)

CUSTOMERS_PATH = "/customer/data"
LIST_COLUMNS = ("customer_id", "name", "email", "status", "created_at")


class CustomerStatus(StrEnum):
    active = "active"
    inactive = "inactive"
    suspended = "suspended"


def list_page(
    client: ApiClient, status: str | None, limit: int, cursor: str | None
) -> dict[str, Any]:
    """One page of the tenant's customers: ``{items, next_cursor, count}``."""
    return client.page(CUSTOMERS_PATH, {"status": status, "limit": limit, "cursor": cursor})


def list_all(client: ApiClient, status: str | None, limit: int, quiet: bool) -> list[Any]:
    """Every customer, page after page, with a progress line on stderr."""
    items: list[Any] = []
    params = {"status": status, "limit": limit}
    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), console=err_console, disable=quiet
    ) as progress:
        task = progress.add_task("fetching customers", total=None)
        for page in client.pages(CUSTOMERS_PATH, params):
            items.extend(page.get("items", []))
            progress.update(task, description=f"fetched {len(items)} customers")
    return items


def create_customer(
    client: ApiClient,
    name: str,
    email: str | None,
    status: str | None,
    idempotency_key: str | None = None,
) -> dict[str, Any]:
    """Create a customer for the key's tenant (writes a ``customer_creation`` event).

    With ``idempotency_key`` a repeat of the same call answers the first customer.
    """
    body = {"name": name, "email": email, "status": status}
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    payload = {k: v for k, v in body.items() if v is not None}
    return dict(client.post(CUSTOMERS_PATH, json=payload, headers=headers))


@app.command("list")
def list_command(
    ctx: typer.Context,
    status: Annotated[
        CustomerStatus | None, typer.Option("--status", help="Only customers with this status.")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=200, help="Customers per page.")] = 50,
    cursor: Annotated[
        str | None, typer.Option("--cursor", help="Continue from this next_cursor.")
    ] = None,
    fetch_all: Annotated[
        bool, typer.Option("--all", help="Follow next_cursor through every page.")
    ] = False,
    json_output: JsonOption = False,
) -> None:
    """List the tenant's customers, one page or --all (JSON: an array of customers)."""
    cli = state(ctx)
    status_value = status.value if status else None
    with api_client(cli.settings(), "tenant", "customers list") as client:
        if fetch_all:
            items, next_cursor = list_all(client, status_value, limit, cli.quiet), None
        else:
            page = list_page(client, status_value, limit, cursor)
            items, next_cursor = page.get("items", []), page.get("next_cursor")
    emit_rows(items, LIST_COLUMNS, wants_json(ctx, json_output), "Customers")
    if next_cursor:
        info(f"more customers: --cursor {next_cursor} (or --all)", cli.quiet)


@app.command("show")
def show_command(
    ctx: typer.Context,
    customer_id: Annotated[str, typer.Argument(help="The customer's id (UUID).")],
    json_output: JsonOption = False,
) -> None:
    """Show one customer of the tenant."""
    with api_client(state(ctx).settings(), "tenant", "customers show") as client:
        record = client.get(f"{CUSTOMERS_PATH}/{customer_id}")
    emit_record(record, wants_json(ctx, json_output), "Customer")


@app.command("create")
def create_command(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The customer's name.")],
    email: Annotated[str | None, typer.Option("--email", help="The customer's email.")] = None,
    status: Annotated[
        CustomerStatus | None, typer.Option("--status", help="Initial status (default active).")
    ] = None,
    idempotency_key: Annotated[
        str | None,
        typer.Option(
            "--idempotency-key",
            help="Safe to retry: the same key and arguments within 24 h give the first customer.",
        ),
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Create a customer for the tenant (emits a customer_creation event)."""
    with api_client(state(ctx).settings(), "tenant", "customers create") as client:
        record = create_customer(
            client, name, email, status.value if status else None, idempotency_key
        )
    emit_record(record, wants_json(ctx, json_output), "Customer created")


def erase_customer(client: ApiClient, customer_id: str) -> dict[str, Any]:
    """Erase the customer's personal data (``POST /customer/data/{id}/erase``)."""
    return dict(client.post(f"{CUSTOMERS_PATH}/{customer_id}/erase"))


@app.command("erase")
def erase_command(
    ctx: typer.Context,
    customer_id: Annotated[str, typer.Argument(help="The customer's id (UUID).")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show the customer and stop.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    json_output: JsonOption = False,
) -> None:
    """Erase a customer's personal data for good (name, email, tags, analytics, event
    payloads); emits customer_erasure. Cannot be undone."""
    cli = state(ctx)
    as_json = wants_json(ctx, json_output)
    with api_client(cli.settings(), "tenant", "customers erase") as client:
        if dry_run:
            emit_record(client.get(f"{CUSTOMERS_PATH}/{customer_id}"), as_json, "Would erase")
            info("dry run: nothing changed", cli.quiet)
            return
        confirm(f"Erase the personal data of customer {customer_id}? This cannot be undone.", yes)
        record = erase_customer(client, customer_id)
    emit_record(record, as_json, "Customer erased")
