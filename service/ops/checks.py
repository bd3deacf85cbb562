"""Dependency checks behind ``/ready``: each bounded in time, none raises, shared for a while.

``ReadinessCache`` keeps the last result ``READY_CACHE_SECONDS``: a stranger calling
``/ready`` in a loop costs a dictionary lookup, not a database round trip, an AMQP
handshake (a new broker connection) and a Redis connection per call. One caller refreshes
at a time; the others wait for its answer.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import pika
import redis
from sqlalchemy import Engine, text

from service.config import Settings
from service.messaging.connection import CONNECT_ERRORS, connection_parameters, first_answering

CHECK_TIMEOUT_SECONDS = 1.0
READY_CACHE_SECONDS = 2.0
T = TypeVar("T")


@dataclass(frozen=True)
class CheckResult:
    """One dependency's state: ``ok``, whether the service needs it, and a short detail."""

    ok: bool
    required: bool
    detail: str


def check_database(engine: Engine) -> CheckResult:
    """``SELECT 1`` through the pool (connect timeout 3 s)."""
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:
        return CheckResult(False, True, f"unreachable ({type(exc).__name__})")
    return CheckResult(True, True, "ok")


def database_version(engine: Engine) -> str:
    """The server's version (``SHOW server_version``); raises when it is unreachable."""
    with engine.connect() as connection:
        return str(connection.execute(text("SHOW server_version")).scalar())


def check_broker(settings: Settings) -> CheckResult:
    """An AMQP handshake with a 1 s timeout; the API still accepts writes without it."""

    def handshake(url: str) -> None:
        parameters = connection_parameters(url, connect_timeout=CHECK_TIMEOUT_SECONDS)
        parameters.stack_timeout = CHECK_TIMEOUT_SECONDS
        pika.BlockingConnection(parameters).close()

    try:
        first_answering(settings.rabbitmq_url, handshake, CONNECT_ERRORS)
    except Exception as exc:
        return CheckResult(False, False, f"unreachable ({type(exc).__name__})")
    return CheckResult(True, False, "ok")


def check_redis(settings: Settings) -> CheckResult:
    """PING with a 1 s timeout; without Redis each process limits on its own."""
    if not settings.redis_url:
        return CheckResult(True, False, "not configured (rate limits off)")
    client = redis.Redis.from_url(
        settings.redis_url,
        socket_timeout=CHECK_TIMEOUT_SECONDS,
        socket_connect_timeout=CHECK_TIMEOUT_SECONDS,
    )
    try:
        client.ping()
    except Exception as exc:
        return CheckResult(
            False, False, f"unreachable ({type(exc).__name__}); each process limits on its own"
        )
    finally:
        client.close()
    return CheckResult(True, False, "ok")


class ReadinessCache:
    """The last readiness result, reused for ``ttl`` seconds; one refresh at a time."""

    def __init__(self, ttl: float = READY_CACHE_SECONDS) -> None:
        self.ttl = ttl
        self.refreshes = 0
        self._lock = threading.Lock()
        self._value: object = None
        self._expires = 0.0

    def get(self, compute: Callable[[], T]) -> T:
        """The cached result while fresh, else ``compute()`` (cached in turn)."""
        with self._lock:
            if self._value is None or time.monotonic() >= self._expires:
                self._value = compute()
                self._expires = time.monotonic() + self.ttl
                self.refreshes += 1
            return self._value  # type: ignore[return-value]


@dataclass(frozen=True)
class ReadinessReport:
    """Each dependency's state; ready unless a required one is down."""

    checks: dict[str, CheckResult]

    @property
    def ready(self) -> bool:
        return not any(result.required and not result.ok for result in self.checks.values())

    def summary(self) -> str:
        """``database unreachable (OperationalError); broker ok; redis ok``."""
        return "; ".join(f"{name} {result.detail}" for name, result in self.checks.items())


def readiness(cache: ReadinessCache, engine: Engine, settings: Settings) -> ReadinessReport:
    """The dependencies' states, checked at most once per ``cache`` period."""
    return cache.get(lambda: check_dependencies(engine, settings))


def check_dependencies(engine: Engine, settings: Settings) -> ReadinessReport:
    """Each dependency checked once, now."""
    return ReadinessReport(
        {
            "database": check_database(engine),
            "broker": check_broker(settings),
            "redis": check_redis(settings),
        }
    )
