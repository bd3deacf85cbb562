"""The checks behind `fintegrate doctor`: each bounded by short timeouts, none changes state."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pika.exceptions
import redis
from sqlalchemy import Engine

from fintegrate_cli._client import ApiClient
from fintegrate_cli._errors import CliError
from service.config import Settings
from service.consumers import service as consumers
from service.events import partitions, repair
from service.events.locks import MAINTAIN_PROCESS, advisory_holder
from service.events.service import outbox_backlog, recent_delivery_p99
from service.gateway.config import INSTANCES_SERVICE
from service.gateway.pages import EDGE_HEADER
from service.kit.errors import first_line
from service.messaging import topology
from service.messaging.connection import open_blocking
from service.messaging.operate import inspection
from service.messaging.publish import leases
from service.migrations import runner as migrations
from service.ops.checks import database_version

CONNECT_TIMEOUT_SECONDS = 3.0
BACKLOG_WARN_SECONDS = 60.0
DELIVERY_WINDOW_MINUTES = 5
DELIVERY_WARN_SECONDS = 5.0
TOPOLOGY_BUDGET_SECONDS = 15.0
OK, WARN, FAIL = "ok", "warn", "fail"
DATABASE_HINT = "start PostgreSQL (scripts/prepare_services.sh) or fix FINTEGRATE_DATABASE_URL"
BROKER_HINT = "start RabbitMQ (scripts/prepare_services.sh) or fix FINTEGRATE_RABBITMQ_URL"
EXCHANGE_HINT = "run `fintegrate queues provision` (or start `fintegrate relay`)"
API_HINT = "start it with `fintegrate serve` or fix --api-url / FINTEGRATE_API_URL"
GATEWAY_HINT = "start it with `fintegrate gateway` (scripts/run.sh does) or fix FINTEGRATE_API_URL"
INSTANCES_HINT = "start the missing instance(s) with `fintegrate serve --port PORT`"
PARTITIONS_AHEAD_WARN = timedelta(days=7)
GATEWAY_PROBE_PATH = "/_edge/doctor"  # an unknown path: the gateway's error pages answer it


@dataclass
class Check:
    """One line of the report: what was checked, how it went, and what to do."""

    name: str
    status: str
    detail: str
    hint: str = ""
    duration_ms: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def timed(name: str, probe: Callable[[], Check], hint: str) -> Check:
    """Run ``probe``; any exception becomes a failed check with its reason and ``hint``."""
    started = time.monotonic()
    try:
        check = probe()
    except Exception as exc:
        check = Check(name, FAIL, failure_reason(exc), hint)
    check.duration_ms = round((time.monotonic() - started) * 1000)
    return check


def failure_reason(exc: BaseException) -> str:
    """A failed check's reason: the exception's type and the first line of its message
    (the driver's own for SQLAlchemy errors)."""
    if isinstance(exc, CliError):
        return exc.message
    return f"{type(exc).__name__}: {first_line(getattr(exc, 'orig', None) or exc)}"


def check_database(engine: Engine) -> Check:
    version = database_version(engine)
    return Check("database", OK, f"PostgreSQL {version} at {engine.url.host}:{engine.url.port}")


def check_migrations(engine: Engine) -> Check:
    states = migrations.status(engine)
    problems = [s for s in states if s.state != "applied"]
    if not problems:
        return Check("migrations", OK, f"{len(states)} applied, none pending or changed")
    summary = ", ".join(f"{s.filename} ({s.state})" for s in problems)
    drifted = any(s.state in ("changed", "missing") for s in problems)
    hint = (
        "restore the original files; run `fintegrate migrate verify`"
        if drifted
        else "run `fintegrate migrate apply`"
    )
    return Check("migrations", FAIL, summary, hint)


def check_outbox(engine: Engine) -> Check:
    """Pending events and the age of the oldest: an old one means the relay is not keeping up."""
    with engine.connect() as connection:
        backlog = outbox_backlog(connection)
    if not backlog.pending:
        return Check("outbox", OK, "no event waiting to be published")
    age = (datetime.now(UTC) - backlog.oldest_created_at).total_seconds()
    detail = f"{backlog.pending} pending, oldest {age:.0f}s old"
    if age > BACKLOG_WARN_SECONDS:
        return Check("outbox", WARN, detail, "is `fintegrate relay` running? see its log")
    return Check("outbox", OK, detail)


def check_delivery(engine: Engine) -> Check:
    """p99 from creation to receipt over the last minutes (the FintegrateDeliverySlow alert)."""
    with engine.connect() as connection:
        recent = recent_delivery_p99(connection, DELIVERY_WINDOW_MINUTES)
    window = f"last {DELIVERY_WINDOW_MINUTES} min"
    if not recent.delivered:
        return Check("delivery", OK, f"no event delivered in the {window}")
    p99, delivered = recent.p99_seconds, recent.delivered
    detail = f"p99 {p99:.2f}s from creation to receipt, {delivered} delivered ({window})"
    if p99 > DELIVERY_WARN_SECONDS:
        return Check("delivery", WARN, detail, "see the outbox age, the relays and the workers")
    return Check("delivery", OK, detail)


def check_relays(engine: Engine, settings: Settings) -> Check:
    """Relays alive and partitions leased: a partition without a lease is not being published."""
    with engine.connect() as connection:
        summary = leases.lease_summary(connection, settings.relay_lease_ttl_seconds)
    detail = (
        f"{summary.live} live relay(s), {summary.leased}/{summary.partitions} partitions leased"
    )
    if not summary.live:
        return Check("relays", WARN, "no live relay", "start `fintegrate relay` (several may run)")
    if summary.leased < summary.partitions:
        return Check("relays", WARN, detail, "a relay died recently? leases move within the TTL")
    return Check("relays", OK, detail)


def check_history(engine: Engine) -> Check:
    """What an interrupted archive left (frozen or half-detached partitions, DEFAULT off),
    and whether `fintegrate maintain` runs (it repairs them and keeps partitions ahead)."""
    leftovers = repair.inspect_leftovers(engine)
    with engine.connect() as connection:
        holder = advisory_holder(connection, MAINTAIN_PROCESS)
        horizon = max(
            (p.range_end for p in partitions.list_partitions(connection) if p.range_end),
            default=None,
        )
        in_default = partitions.oldest_default_row(connection) is not None
    running = f"maintain: {holder}" if holder else "no `fintegrate maintain` running"
    if horizon is None or horizon < datetime.now(UTC) + PARTITIONS_AHEAD_WARN:
        leftovers.append("fewer than 7 days of partitions ahead")
    if in_default:
        leftovers.append("rows waiting in the DEFAULT partition")
    if leftovers:
        return Check(
            "history",
            WARN,
            f"{', '.join(leftovers)}; {running}",
            "run `fintegrate maintain` (`--once` repairs it now)",
        )
    return Check("history", OK, f"partitions ahead, nothing left by an archive; {running}")


def consumer_names(engine: Engine) -> list[str]:
    with engine.connect() as connection:
        return consumers.consumer_names(connection)


@contextmanager
def broker_channel(settings: Settings) -> Iterator[Callable[[], Any]]:
    """A factory of fresh channels on one short-timeout connection (closed afterwards)."""
    connection = open_blocking(settings.rabbitmq_url, connect_timeout=CONNECT_TIMEOUT_SECONDS)
    try:
        yield connection.channel
    finally:
        if connection.is_open:
            connection.close()


def check_broker(settings: Settings, open_channel: Callable[[], Any]) -> Check:
    channel = open_channel()
    channel.exchange_declare(topology.EXCHANGE, topology.EXCHANGE_TYPE, passive=True)
    channel.close()
    return Check("rabbitmq", OK, f"reachable; exchange {topology.EXCHANGE} exists")


def queue_depth(open_channel: Callable[[], Any], queue: str) -> int | None:
    """Messages in ``queue`` via a passive declare; None when the queue does not exist."""
    channel = open_channel()
    try:
        frame = channel.queue_declare(queue, passive=True)
    except pika.exceptions.ChannelClosedByBroker:
        return None
    channel.close()
    return int(frame.method.message_count)


def check_queues(
    settings: Settings, names: list[str], open_channel: Callable[[], Any]
) -> list[Check]:
    """Every tenant's topology matches SPEC 5, and how many dead letters wait.

    Stops inspecting after TOPOLOGY_BUDGET_SECONDS; tenants left are reported unchecked.
    """
    deadline = time.monotonic() + TOPOLOGY_BUDGET_SECONDS
    reports: list[inspection.TopologyReport] = []
    for name in names:
        if time.monotonic() > deadline:
            break
        reports.append(inspection.inspect_tenant(settings, name))
    dead: dict[str, int] = {}
    for report in reports:
        depth = queue_depth(open_channel, report.dlq) if report.dlq_exists else None
        if depth:
            dead[report.consumer_name] = depth
    return [
        topology_check(reports, len(names) - len(reports)),
        dlq_check(names, dead, settings.dlq_max_length),
    ]


def topology_check(reports: list[inspection.TopologyReport], unchecked: int) -> Check:
    bad = [report for report in reports if not report.ok]
    if bad:
        detail = "; ".join(f"{r.consumer_name}: {', '.join(problems(r))}" for r in bad)
        return Check("topology", FAIL, detail, " | ".join(bad[0].advice()))
    if unchecked:
        return Check(
            "topology",
            WARN,
            f"{len(reports)} consumer(s) match, {unchecked} not checked in time",
            "the broker or its management API is slow; rerun, or check it directly",
        )
    partial = any(not report.bindings_checked for report in reports)
    note = " (bindings unchecked: set FINTEGRATE_RABBITMQ_MANAGEMENT_URL)" if partial else ""
    return Check("topology", OK, f"{len(reports)} consumer(s) match SPEC 5{note}")


def problems(report: inspection.TopologyReport) -> list[str]:
    """Short names of what differs in one tenant's topology."""
    found = [
        f"{queue} missing"
        for queue, exists in ((report.queue, report.queue_exists), (report.dlq, report.dlq_exists))
        if not exists
    ]
    found += [f"{d.queue} {d.argument}={d.live!r} (want {d.expected!r})" for d in report.drift]
    found += [f"unfinished migration: {queue} exists" for queue in report.migration_queues]
    found += [f"binding {key} missing" for key in report.missing_bindings]
    found += [f"extra binding {key}" for key in report.extra_bindings]
    return found


def dlq_check(names: list[str], dead: dict[str, int], bound: int) -> Check:
    """Dead letters waiting; a DLQ at its bound drops its oldest, which doctor says."""
    if not dead:
        return Check("dead letters", OK, f"{len(names)} DLQ(s) empty")
    detail = ", ".join(
        f"{name}: {depth}" + (" (full: its oldest are being dropped)" if depth >= bound else "")
        for name, depth in sorted(dead.items())
    )
    return Check("dead letters", WARN, detail, "inspect, then `fintegrate queues replay-dlq`")


def check_redis(settings: Settings) -> Check:
    if not settings.redis_url:
        return Check("redis", WARN, "not configured", "set FINTEGRATE_REDIS_URL for rate limits")
    client = redis.Redis.from_url(
        settings.redis_url, socket_connect_timeout=1.0, socket_timeout=1.0
    )
    try:
        client.ping()
    except redis.RedisError as exc:
        return Check(
            "redis",
            WARN,
            f"unreachable ({failure_reason(exc)}); each API process limits on its own",
            "start Redis or fix FINTEGRATE_REDIS_URL",
        )
    finally:
        client.close()
    return Check("redis", OK, "reachable")


def check_api(settings: Settings) -> Check:
    """``/health`` and ``/ready``; a dependency the API reports down is a warning."""
    try:
        with ApiClient(settings.api_url, timeout=CONNECT_TIMEOUT_SECONDS) as client:
            client.get("/health")
            ready = client.get("/ready")
    except CliError as exc:
        return Check("api", FAIL, exc.message.split(";")[0], API_HINT)
    parts = ready_parts(ready)
    listed = ", ".join(f"{name} {'ok' if ok else 'down'}" for name, ok in parts.items())
    detail = f"{settings.api_url} ready ({listed})" if listed else f"{settings.api_url} ready"
    if not all(parts.values()):
        return Check("api", WARN, detail, "the API runs degraded; see the checks above")
    return Check("api", OK, detail)


def ready_parts(ready: Any) -> dict[str, bool]:
    """``{dependency: ok}`` from the ``/ready`` data (``{name: {"ok": ...}, ...}``)."""
    if not isinstance(ready, dict):
        return {}
    return {name: bool(v.get("ok")) for name, v in ready.items() if isinstance(v, dict)}


def gateway_expected(settings: Settings) -> bool:
    """FINTEGRATE_API_URL names the gateway's own address (FINTEGRATE_GATEWAY_HOST/PORT)."""
    url = httpx.URL(settings.api_url)
    return (url.host, url.port) == (settings.gateway_host, settings.gateway_port)


def check_gateway(settings: Settings) -> Check:
    """Is the gateway in front of FINTEGRATE_API_URL, and (with its dashboard) who is up."""
    probe = httpx.get(
        settings.api_url.rstrip("/") + GATEWAY_PROBE_PATH, timeout=CONNECT_TIMEOUT_SECONDS
    )
    if EDGE_HEADER not in probe.headers:
        if gateway_expected(settings):
            detail = f"{settings.api_url} answers without the gateway (an API instance?)"
            return Check("gateway", WARN, detail, GATEWAY_HINT)
        return Check("gateway", OK, f"not in use: {settings.api_url} is an API instance")
    if settings.gateway_dashboard_port is None:
        detail = f"in front of {settings.api_url} (set FINTEGRATE_GATEWAY_DASHBOARD_PORT for "
        return Check("gateway", OK, detail + "instance health)")
    return instances_check(settings)


def instances_check(settings: Settings) -> Check:
    """The gateway's view of its instances, from Traefik's API on the dashboard port."""
    api = f"http://127.0.0.1:{settings.gateway_dashboard_port}/api/http/services"
    service = httpx.get(f"{api}/{INSTANCES_SERVICE}@file", timeout=CONNECT_TIMEOUT_SECONDS).json()
    statuses: dict[str, str] = service.get("serverStatus", {})
    down = sorted(url for url, status in statuses.items() if status != "UP")
    summary = f"{len(statuses) - len(down)}/{len(statuses)} API instance(s) up"
    if not down:
        return Check("gateway", OK, f"in front of {settings.api_url}; {summary}")
    detail = f"{summary}; down: {', '.join(down)}"
    return Check("gateway", FAIL if len(down) == len(statuses) else WARN, detail, INSTANCES_HINT)
