"""fintegrate demo: a newcomer's first five minutes on a running stack."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Annotated, Any

import typer
from rich.live import Live
from rich.table import Table

from fintegrate_cli import _demo_worker
from fintegrate_cli._client import ApiClient, api_client
from fintegrate_cli._context import state
from fintegrate_cli._demo_webhook import DemoWebhook
from fintegrate_cli._errors import CheckFailed
from fintegrate_cli._output import (
    JsonOption,
    console,
    emit_record,
    err_console,
    info,
    print_json,
    wants_json,
)
from fintegrate_cli.consumer import KEY_WARNING, create_consumer, print_key_line
from fintegrate_cli.customers import create_customer
from service.config import Settings

DEMO_CUSTOMERS = (
    ("Ada Lovelace", "ada@example.com"),
    ("Grace Hopper", "grace@example.com"),
    ("Alan Turing", "alan@example.com"),
    ("Katherine Johnson", "katherine@example.com"),
    ("Edsger Dijkstra", "edsger@example.com"),
)
POLL_SECONDS = 0.5
EVENT_COLUMNS = ("event_type", "customer", "published", "received", "webhook", "delivered")


@dataclass
class DemoRun:
    """What the demo created and what it saw come back."""

    consumer: dict[str, Any]
    customers: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    received: set[str] = field(default_factory=set)
    webhook: DemoWebhook = field(default_factory=DemoWebhook)
    webhook_received: dict[str, bool] = field(default_factory=dict)
    elapsed_seconds: float = 0.0

    @property
    def delivered(self) -> int:
        return sum(1 for event in self.events if event["deliver_status"] == "delivered")

    @property
    def published(self) -> int:
        return sum(1 for event in self.events if event["publish_status"] == "published")

    def summary(self) -> dict[str, Any]:
        return {
            "consumer": self.consumer.get("name"),
            "consumer_id": self.consumer.get("consumer_id"),
            "queue_name": self.consumer.get("queue_name"),
            "api_key": self.consumer.get("api_key"),
            "customers": len(self.customers),
            "events": len(self.events),
            "published": self.published,
            "received_by_worker": len(self.received),
            "received_by_webhook": len(self.webhook_received),
            "webhook_signatures_verified": sum(self.webhook_received.values()),
            "delivered": self.delivered,
            "elapsed_seconds": round(self.elapsed_seconds, 2),
        }


def create_activity(tenant: ApiClient, count: int) -> list[dict[str, Any]]:
    """A few customers, then one status change: each writes an event."""
    customers = [
        create_customer(tenant, name, email, None) for name, email in DEMO_CUSTOMERS[:count]
    ]
    first = customers[0]["customer_id"]
    tenant.patch(f"/customer/data/{first}/status", json={"status": "suspended"})
    return customers


def fetch_events(tenant: ApiClient) -> list[dict[str, Any]]:
    return tenant.all_items("/events", {"limit": 200})


def event_rows(run: DemoRun) -> list[dict[str, str]]:
    names = {c["customer_id"]: c["name"] for c in run.customers}
    return [
        {
            "event_type": event["event_type"],
            "customer": names.get(event.get("customer_id"), "-"),
            "published": mark(event["publish_status"] == "published"),
            "received": mark(str(event["event_id"]) in run.received),
            "webhook": webhook_mark(run, str(event["event_id"])),
            "delivered": mark(event["deliver_status"] == "delivered"),
        }
        for event in run.events
    ]


def mark(done: bool) -> str:
    return "[green]yes[/]" if done else "[yellow]...[/]"


def webhook_mark(run: DemoRun, event_id: str) -> str:
    """``signed`` (verified with standardwebhooks), ``yes`` (not verifiable here), or waiting."""
    if run.webhook.endpoint_id is None:
        return "-"
    if event_id not in run.webhook_received:
        return "[yellow]...[/]"
    return "[green]signed[/]" if run.webhook_received[event_id] else "[green]yes[/]"


def webhooks_done(run: DemoRun) -> bool:
    """Every event written after the endpoint (all but consumer_created) came over HTTP."""
    if run.webhook.endpoint_id is None:
        return True
    later = [e for e in run.events if e["event_type"] != "consumer_created"]
    return all(str(event["event_id"]) in run.webhook_received for event in later)


def events_table(run: DemoRun) -> Table:
    table = Table(title=f"Events of {run.consumer['name']} ({run.delivered}/{len(run.events)})")
    for column in EVENT_COLUMNS:
        table.add_column(column)
    for row in event_rows(run):
        table.add_row(*(row[column] for column in EVENT_COLUMNS))
    return table


def all_delivered(run: DemoRun, expected: int) -> bool:
    return len(run.events) >= expected and run.delivered == len(run.events)


def watch(
    tenant: ApiClient, run: DemoRun, expected: int, timeout: float, live: Live | None
) -> None:
    """Poll the tenant's events until every one is delivered or ``timeout`` passes."""
    started = time.monotonic()
    deadline = started + timeout
    while True:
        run.events = fetch_events(tenant)
        run.webhook_received = run.webhook.received()
        run.elapsed_seconds = time.monotonic() - started
        if live is not None:
            live.update(events_table(run))
        done = all_delivered(run, expected) and webhooks_done(run)
        if done or time.monotonic() >= deadline:
            return
        time.sleep(POLL_SECONDS)


def missing_hint(run: DemoRun, worker: bool) -> str:
    """What to check when not every event came back in time."""
    if run.published < len(run.events):
        return "events are still pending publication: is `fintegrate relay` running?"
    if not worker:
        return "events reached the queue but nobody confirmed them: run `fintegrate consume`"
    return "the in-process worker did not confirm every event: see `fintegrate doctor`"


def print_summary(run: DemoRun, as_json: bool) -> None:
    if as_json:
        print_json({**run.summary(), "events_detail": run.events})
        return
    console.print(events_table(run))
    emit_record(run.summary(), False, "Demo summary")
    print_key_line(run.consumer["api_key"])
    err_console.print(f"[bold yellow]{KEY_WARNING}[/]", soft_wrap=True)
    info(f"Next: FINTEGRATE_API_KEY={run.consumer['api_key']} fintegrate customers list")
    info(f"Done with it? fintegrate consumer disable {run.consumer['name']}")


def create_demo_tenant(settings: Settings, quiet: bool) -> dict[str, Any]:
    """A fresh ``demo_<random>`` consumer; the API provisions its queue and DLQ."""
    with api_client(settings, "admin", "demo") as admin:
        admin.get("/health")
        consumer = create_consumer(admin, f"demo_{secrets.token_hex(4)}", "fintegrate demo")
    info(f"created tenant {consumer['name']} with queue {consumer['queue_name']}", quiet)
    return consumer


def watch_live(tenant: ApiClient, run: DemoRun, expected: int, timeout: float, live: bool) -> None:
    """``watch`` with a live table on stderr (people) or silently (scripts, -q)."""
    if not live:
        watch(tenant, run, expected, timeout, None)
        return
    with Live(events_table(run), console=err_console, transient=True) as display:
        watch(tenant, run, expected, timeout, display)


def run_demo(
    settings: Settings,
    count: int,
    timeout: float,
    worker: bool,
    quiet: bool,
    live: bool,
    webhook: bool = True,
) -> DemoRun:
    """Create a tenant and activity, consume its queue in-process and receive its webhooks on
    a loopback endpoint, watch events come back."""
    run = DemoRun(create_demo_tenant(settings, quiet))
    key, name = run.consumer["api_key"], run.consumer["name"]
    handle = None
    if worker:
        handle = _demo_worker.start(settings, key, name, run.received)
        info(f"worker consuming {run.consumer['queue_name']} in-process", quiet)
    with ApiClient(settings.api.url, api_key=key) as tenant:
        try:
            if webhook:
                run.webhook.open(tenant)
                info(run.webhook.note or webhook_line(run.webhook), quiet)
            run.customers = create_activity(tenant, count)
            info(f"created {count} customer(s), suspended {run.customers[0]['name']}", quiet)
            watch_live(tenant, run, count + 2, timeout, live)  # + consumer_created, status change
        finally:
            run.webhook.close(tenant)
            if handle is not None:
                handle.stop()
    return run


def webhook_line(webhook: DemoWebhook) -> str:
    url = webhook.receiver.url if webhook.receiver is not None else "?"
    check = (
        "signatures checked with standardwebhooks"
        if webhook.verifying
        else ("standardwebhooks not installed: signatures not checked")
    )
    return f"webhook endpoint on {url} ({check}); needs `fintegrate webhooks deliver`"


def demo_command(
    ctx: typer.Context,
    customers: Annotated[
        int,
        typer.Option("--customers", min=1, max=len(DEMO_CUSTOMERS), help="Customers to create."),
    ] = 3,
    timeout: Annotated[
        float, typer.Option("--timeout", min=1.0, help="Seconds to wait for every delivery.")
    ] = 60.0,
    worker: Annotated[
        bool,
        typer.Option(
            "--worker/--no-worker",
            help="Consume the demo queue in-process and confirm each event (else rely on a "
            "running `fintegrate consume`).",
        ),
    ] = True,
    webhook: Annotated[
        bool,
        typer.Option(
            "--webhook/--no-webhook",
            help="Also receive the events over HTTP on a loopback endpoint (needs `fintegrate "
            "webhooks deliver` and 127.0.0.0/8 in FINTEGRATE_WEBHOOK_ALLOWED_CIDRS).",
        ),
    ] = True,
    json_output: JsonOption = False,
) -> None:
    """Create a demo tenant and customers, then watch their events reach its queue (and its
    webhook endpoint) and the delivery receipts come back. Needs a running API and relay and
    the operator key. Exit 3 when not every event was delivered within --timeout."""
    cli = state(ctx)
    as_json = wants_json(ctx, json_output)
    live = not (as_json or cli.quiet)
    run = run_demo(cli.settings(), customers, timeout, worker, cli.quiet, live, webhook)
    print_summary(run, as_json)
    if not all_delivered(run, customers + 2):
        raise CheckFailed(
            f"demo: {run.delivered}/{len(run.events)} events delivered within {timeout:.0f}s; "
            + missing_hint(run, worker)
        )


def register(app: typer.Typer) -> None:
    """Attach this module's commands to the root app."""
    app.command("demo")(demo_command)
