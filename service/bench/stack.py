"""The stack a benchmark runs on: its own database and vhost on the configured servers.

Every run gets a fresh migrated database (``servers.fresh_database``) and a fresh RabbitMQ
vhost, both dropped at the end, so a benchmark never touches the deployment's data and
two runs never share a queue.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from types import FrameType
from urllib.parse import quote, urlsplit, urlunsplit

import httpx

from service.bench.servers import NEVER_LIMITED, fresh_database
from service.config import Settings
from service.messaging.connection import open_blocking, split_urls

MANAGEMENT_PORT = 15672
STOP_TIMEOUT_SECONDS = 20.0


def management_url(settings: Settings) -> str:
    """The management API: FINTEGRATE_RABBITMQ_MANAGEMENT_URL's first node, else the
    broker's host on port 15672 with the broker's login."""
    if settings.rabbitmq_management_url:
        return split_urls(settings.rabbitmq_management_url)[0]
    broker = urlsplit(split_urls(settings.rabbitmq_url)[0])
    login = f"{broker.username or 'guest'}:{broker.password or 'guest'}"
    return f"http://{login}@{broker.hostname}:{MANAGEMENT_PORT}"


@contextmanager
def fresh_vhost(settings: Settings) -> Iterator[str]:
    """A new vhost the broker's login may use; yields its AMQP URL, deletes it after."""
    vhost = f"bench_{uuid.uuid4().hex[:12]}"
    broker = urlsplit(split_urls(settings.rabbitmq_url)[0])
    api = management_url(settings)
    path = quote(vhost, safe="")
    user = quote(broker.username or "guest", safe="")
    httpx.put(f"{api}/api/vhosts/{path}", timeout=10).raise_for_status()
    try:
        httpx.put(
            f"{api}/api/permissions/{path}/{user}",
            json={"configure": ".*", "write": ".*", "read": ".*"},
            timeout=10,
        ).raise_for_status()
        yield urlunsplit(broker._replace(path=f"/{path}"))
    finally:
        httpx.delete(f"{api}/api/vhosts/{path}", timeout=30)


@contextmanager
def isolated(
    settings: Settings, overrides: Mapping[str, object], keep_database: bool = False
) -> Iterator[Settings]:
    """``settings`` pointed at a fresh database and vhost (and ``overrides``)."""
    with fresh_database(keep_database) as database_url, fresh_vhost(settings) as amqp_url:
        yield settings.model_copy(
            update={"database_url": database_url, "rabbitmq_url": amqp_url, **overrides}
        )


def process_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of a ``fintegrate`` child process configured exactly as ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FINTEGRATE_")}
    for key, value in settings.model_dump(exclude_none=True).items():
        env[f"FINTEGRATE_{key.upper()}"] = str(value)
    return {**env, **extra}


def background(
    stack: ExitStack, command: list[str], env: dict[str, str]
) -> subprocess.Popen[bytes]:
    """Starts ``command`` quietly; the stack stops it (SIGTERM, then SIGKILL)."""
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )

    def stop() -> None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)

    stack.callback(stop)
    return process


def api_overrides() -> dict[str, object]:
    """What an API under a benchmark needs: an operator key, tenant limits that never refuse."""
    return {
        "admin_api_key": f"bench-{uuid.uuid4().hex}",
        "rate_limit_api_key_per_minute": NEVER_LIMITED,
        "rate_limit_api_key_burst": NEVER_LIMITED,
    }


def tenant_through_api(api_url: str, settings: Settings) -> dict[str, str]:
    """A new tenant created with the operator key; its ``name`` and ``api_key`` among others."""
    response = httpx.post(
        f"{api_url}/consumer/data",
        json={"name": f"bench_{uuid.uuid4().hex[:8]}"},
        headers={"X-Admin-Key": settings.admin_api_key or ""},
        timeout=30,
    )
    response.raise_for_status()
    created: dict[str, str] = response.json()["data"]
    return created


@contextmanager
def cleaned_up_on_sigterm() -> Iterator[None]:
    """SIGTERM ends a benchmark as Ctrl-C does: its servers stop, its databases and vhosts
    are dropped (a benchmark holds no work worth finishing)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def leave(signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, leave)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def wait_until(done: Callable[[], bool], timeout: float) -> None:
    """Polls ``done`` until true or ``timeout`` s passed (the phase then ends short)."""
    deadline = time.monotonic() + timeout
    while not done() and time.monotonic() < deadline:
        time.sleep(0.01)


def purge_queue(settings: Settings, queue: str) -> None:
    """Empties a queue of the bench's vhost: no phase inherits another's messages."""
    connection = open_blocking(settings.rabbitmq_url)
    try:
        connection.channel().queue_purge(queue)
    finally:
        connection.close()
