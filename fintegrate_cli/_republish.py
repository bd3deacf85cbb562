"""Resend / redeliver from the CLI: preview, confirmation, chunked republish, summary.

The functions take an explicit ApiClient so tests and other commands can call them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fintegrate_cli._client import ApiClient, ApiError, KeyNeed, api_client
from fintegrate_cli._context import state
from fintegrate_cli._errors import EXIT_PARTIAL, CliError
from fintegrate_cli._output import (
    confirm,
    emit_record,
    err_console,
    info,
    print_json,
    print_table,
    wants_json,
)

EVENTS_PATH = "/events"
GROUP_COLUMNS = ("consumer_name", "event_type", "count")
TOTAL_KEYS = ("matched", "republished", "failed", "held_back")
MAX_BUDGET_WAITS = 30
VERB = {"resend": "resend (publish pending events now)", "redeliver": "redeliver (publish again)"}


def republish_filters(
    period_in_days: int, max_try_count: int | None, event_types: list[str], consumer: str | None
) -> dict[str, Any]:
    """The request body filters shared by the preview and every chunk."""
    body: dict[str, Any] = {"period_in_days": period_in_days, "event_types": event_types}
    if max_try_count is not None:
        body["max_try_count"] = max_try_count
    if consumer:
        body["consumer_name"] = consumer
    return body


def preview(client: ApiClient, kind: str, filters: dict[str, Any]) -> dict[str, Any]:
    """The dry run: ``matched`` and the counts per consumer and event type."""
    return dict(client.post(f"{EVENTS_PATH}/{kind}", json={**filters, "dry_run": True}))


def republish_all(
    client: ApiClient,
    kind: str,
    filters: dict[str, Any],
    chunk: int,
    advance: Callable[[int], None] = lambda _n: None,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, int]:
    """Republish chunk by chunk (following ``next_cursor``); totals of every chunk.

    A tenant's per-minute budget answers 429: wait its Retry-After and go on (bounded).
    """
    totals = dict.fromkeys(TOTAL_KEYS, 0)
    cursor = None
    waits = 0
    while True:
        body = {**filters, "dry_run": False, "limit": chunk, "cursor": cursor}
        try:
            data = client.post(f"{EVENTS_PATH}/{kind}", json=body)
        except ApiError as exc:
            if exc.status_code != 429 or waits >= MAX_BUDGET_WAITS:
                raise
            waits += 1
            err_console.print(f"{kind}: {exc.description}; waiting")
            sleep(exc.retry_after or 1.0)
            continue
        for key in totals:
            totals[key] += int(data.get(key, 0))
        advance(int(data.get("matched", 0)))
        cursor = data.get("next_cursor")
        if not cursor:
            return totals


def run_republish(
    ctx: typer.Context,
    kind: str,
    filters: dict[str, Any],
    dry_run: bool,
    yes: bool,
    chunk: int,
    json_output: bool,
) -> None:
    """Preview, confirm, republish with a progress bar, summarise; exit 3 on partial failure."""
    cli = state(ctx)
    as_json = wants_json(ctx, json_output)
    need: KeyNeed = "admin" if "consumer_name" in filters else "either"
    with api_client(cli.settings(), need, f"events {kind}") as client:
        planned = preview(client, kind, filters)
        if not as_json:
            print_table(
                planned.get("groups", []), GROUP_COLUMNS, f"Events to {kind}: {planned['matched']}"
            )
        if dry_run or planned["matched"] == 0:
            if as_json:
                print_json(planned)
            info("dry run: nothing changed" if dry_run else f"nothing to {kind}", cli.quiet)
            return
        confirm(f"{VERB[kind].capitalize()}: {planned['matched']} event(s)?", yes)
        totals = republish_with_progress(
            client, kind, filters, chunk, planned["matched"], cli.quiet
        )
    report_totals(kind, totals, as_json)


def republish_with_progress(
    client: ApiClient, kind: str, filters: dict[str, Any], chunk: int, total: int, quiet: bool
) -> dict[str, int]:
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err_console, disable=quiet) as progress:
        task = progress.add_task(kind, total=total)
        return republish_all(client, kind, filters, chunk, lambda n: progress.advance(task, n))


def report_totals(kind: str, totals: dict[str, int], as_json: bool) -> None:
    emit_record(totals, as_json, f"{kind} summary")
    if totals["failed"] and totals["republished"]:
        raise CliError(
            f"{kind}: {totals['failed']} event(s) failed to publish; their publish_failure_reason "
            "says why (`fintegrate events show ID`); rerun later",
            EXIT_PARTIAL,
        )
    if totals["failed"]:
        raise CliError(f"{kind}: every event failed to publish; check RabbitMQ and the queues")
    if totals["held_back"]:
        info(
            f"{kind}: {totals['held_back']} event(s) held back behind an earlier pending event "
            "of their customer (they keep their order; the relay sends them)",
            False,
        )
