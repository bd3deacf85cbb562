"""fintegrate relay and fintegrate consume: the outbox relay and the event consumer worker."""

from __future__ import annotations

import logging
import threading
from typing import Annotated, Any
from urllib.parse import unquote, urlsplit

import typer
from prometheus_client import REGISTRY
from prometheus_client.registry import Collector

from fintegrate_cli._client import ApiClient, api_client
from fintegrate_cli._context import state
from fintegrate_cli._errors import EXIT_USAGE, CliError
from fintegrate_cli._output import info
from service.kit import tracing
from service.kit.db import bound_database_waits, create_db_engine
from service.kit.heap import freeze_startup_objects
from service.kit.log_safety import DatabaseErrorFilter
from service.messaging.consume import Worker, WorkerConfig, WorkerUnauthorized
from service.messaging.consume.consumer import load_handler, log_event
from service.messaging.consume.worker import IDENTITY_PATH
from service.messaging.metrics import DlqCollector, RelayCollector
from service.messaging.publish.relay import OutboxRelay
from service.messaging.shutdown import install_stop_handlers
from service.messaging.topology import CONSUMER_NAME_PATTERN
from service.ops.metrics_server import start_metrics_server
from service.ops.platform_metrics import register_event_metrics

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
MetricsPortOption = Annotated[
    int | None,
    typer.Option(
        "--metrics-port",
        min=1,
        max=65535,
        help="Serve Prometheus metrics on http://HOST:PORT/metrics (default: off).",
    ),
]
MetricsHostOption = Annotated[
    str,
    typer.Option(
        "--metrics-host", help="Address the metrics server listens on (0.0.0.0 in containers)."
    ),
]


def configure_logging(quiet: bool, debug: bool) -> None:
    """Worker logs on stderr: INFO by default, WARNING with -q, DEBUG with --debug."""
    level = logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format=LOG_FORMAT)
    for handler in logging.getLogger().handlers:
        handler.addFilter(DatabaseErrorFilter())  # no failing row in a logged traceback
    logging.getLogger("pika").setLevel(logging.WARNING if not debug else logging.INFO)


def relay(
    ctx: typer.Context,
    batch_size: Annotated[
        int | None,
        typer.Option("--batch-size", min=1, help="Events per claim (FINTEGRATE_RELAY_BATCH_SIZE)."),
    ] = None,
    poll_seconds: Annotated[
        float | None,
        typer.Option(
            "--poll-seconds", min=0.05, help="Poll fallback when no NOTIFY arrives (seconds)."
        ),
    ] = None,
    once: Annotated[
        bool, typer.Option("--once", help="Publish what is due now, then exit.")
    ] = False,
    metrics_port: MetricsPortOption = None,
    metrics_host: MetricsHostOption = "127.0.0.1",
) -> None:
    """Publish pending outbox events to RabbitMQ until SIGTERM/SIGINT (several may run)."""
    cli = state(ctx)
    settings = cli.settings()
    if poll_seconds is not None:
        settings = settings.updated({"relay_poll_seconds": poll_seconds})
    configure_logging(cli.quiet, cli.debug)
    tracing.configure("fintegrate-relay")
    bound_database_waits(settings.database)
    engine = create_db_engine(settings.database, pool_size=2)
    stop = threading.Event()
    restore = install_stop_handlers(stop)
    outbox_relay = OutboxRelay.from_settings(settings, engine, stop, batch_size=batch_size)
    serve_metrics(metrics_port, metrics_host, RelayCollector(outbox_relay))
    freeze_startup_objects()
    try:
        totals = outbox_relay.drain() if once else outbox_relay.run()
    finally:
        outbox_relay.close()
        restore()
        engine.dispose()
        tracing.flush()
    info(f"relay: {totals.published} published, {totals.failed} failed attempts", cli.quiet)


def consume(
    ctx: typer.Context,
    consumer: Annotated[
        str, typer.Option("--consumer", help="Tenant whose queue to consume (its name).")
    ],
    handler: Annotated[
        str | None,
        typer.Option("--handler", help="module:function called with each event (default: log)."),
    ] = None,
    prefetch: Annotated[
        int | None,
        typer.Option(
            "--prefetch", min=1, help="Unacked messages in flight (FINTEGRATE_CONSUMER_PREFETCH)."
        ),
    ] = None,
    concurrency: Annotated[
        int | None,
        typer.Option(
            "--concurrency",
            min=1,
            help="Handler threads, one aggregate each (default: prefetch, at most 16); "
            "1 calls the handler one event at a time.",
        ),
    ] = None,
    exclusive: Annotated[
        bool,
        typer.Option(
            "--exclusive/--shared",
            help="Consume exclusively (a second worker stands by until this one stops) or "
            "share the queue (per-customer order is then lost across workers).",
        ),
    ] = True,
    metrics_port: MetricsPortOption = None,
    metrics_host: MetricsHostOption = "127.0.0.1",
) -> None:
    """Consume a tenant's queue in per-customer order; ack each event after its receipt."""
    cli = state(ctx)
    settings = cli.settings()
    if not CONSUMER_NAME_PATTERN.match(consumer):
        raise CliError(f"--consumer {consumer!r} must match ^[a-z0-9_]+$", EXIT_USAGE)
    if not settings.api.key:
        raise CliError(
            "consume needs the tenant's API key: pass --api-key or set FINTEGRATE_API_KEY",
            EXIT_USAGE,
        )
    try:
        chosen = load_handler(handler) if handler else log_event
    except ValueError as exc:
        raise CliError(str(exc), EXIT_USAGE) from exc
    with api_client(settings, "tenant", "consume") as client:
        identity = check_worker_identity(client, consumer)
    warn_about_broker_login(settings.broker.url, identity, cli.quiet)
    configure_logging(cli.quiet, cli.debug)
    serve_metrics(metrics_port, metrics_host, DlqCollector(settings.broker.url, consumer))
    worker = Worker(
        consumer,
        WorkerConfig.from_settings(settings),
        default=chosen,
        prefetch=prefetch,
        concurrency=concurrency,
        exclusive=exclusive,
    )
    freeze_startup_objects()
    try:
        stats = worker.run()  # stops on SIGTERM/SIGINT after the events in hand
    except WorkerUnauthorized as exc:
        raise CliError(str(exc)) from exc
    info(
        f"consumer stopped: {stats.processed} processed, {stats.failed} failed, "
        f"{stats.poison} poison, {stats.refused} refused, {stats.stale} stale duplicates skipped",
        cli.quiet,
    )


def serve_metrics(port: int | None, host: str, collector: Collector | None = None) -> None:
    """With ``--metrics-port``: register the process's families and serve them."""
    if port is None:
        return
    if collector is not None:
        REGISTRY.register(collector)
    register_event_metrics(REGISTRY)
    try:
        start_metrics_server(port, host)
    except OSError as exc:
        raise CliError(f"--metrics-port {port}: {exc.strerror or exc}", EXIT_USAGE) from exc


def check_worker_identity(client: ApiClient, consumer: str) -> dict[str, Any]:
    """The consumer the key belongs to (``GET /consumer/me``); a usage error (exit 2) when it
    is not ``consumer``, before anything is taken off a queue."""
    identity = dict(client.get(IDENTITY_PATH))
    owner = identity.get("name")
    if owner != consumer:
        raise CliError(
            f"--consumer {consumer} does not match the API key, which belongs to consumer "
            f"{owner!r}; pass --consumer {owner} or that tenant's own key",
            EXIT_USAGE,
        )
    return identity


def warn_about_broker_login(rabbitmq_url: str, identity: dict[str, Any], quiet: bool) -> None:
    """One line when the worker logs in to RabbitMQ as someone else than the tenant's user."""
    own_user = identity.get("broker_username")
    login = unquote(urlsplit(rabbitmq_url).username or "")
    if own_user and login != own_user:
        info(
            f"consume: FINTEGRATE_RABBITMQ_URL logs in as {login!r}, not the tenant's own broker "
            f"user {own_user!r}; use the broker login shown when the consumer was created",
            quiet,
        )


def register(app: typer.Typer) -> None:
    """Attach this module's commands to the root app."""
    app.command("relay")(relay)
    app.command("consume")(consume)
