"""A Redis client behind a circuit breaker, for checks that must fail open.

Short connect/read timeouts and no client retries bound the cost of one failure; after
it, the breaker skips Redis for ``redis_retry_seconds``, then lets one caller probe.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.commands.core import Script
from redis.retry import Retry

from service.config import Settings

logger = logging.getLogger(__name__)

T = TypeVar("T")


class RedisStore:
    """A Redis client behind a circuit breaker; ``call`` answers None instead of failing."""

    def __init__(self, settings: Settings) -> None:
        self.retry_seconds = settings.redis_retry_seconds
        self.client: redis.Redis | None = None
        if settings.redis_url:
            self.client = redis.Redis.from_url(
                settings.redis_url,
                socket_connect_timeout=settings.redis_timeout_seconds,
                socket_timeout=settings.redis_timeout_seconds,
                retry=Retry(NoBackoff(), 0),
                health_check_interval=0,
            )
        self._scripts: dict[str, Script] = {}
        self._lock = threading.Lock()
        self._closed_breaker = True
        self._next_probe = 0.0

    def register(self, source: str) -> None:
        """Prepare a Lua script for ``run_script`` (EVALSHA, loading it on NOSCRIPT)."""
        if self.client is not None:
            self._scripts[source] = self.client.register_script(source)

    def run_script(self, source: str, keys: list[str], args: list[Any]) -> Any | None:
        """Run a registered script; None when Redis is absent, failing or skipped."""
        return self.call(lambda client: self._scripts[source](keys=keys, args=args, client=client))

    def call(self, operation: Callable[[redis.Redis], T]) -> T | None:
        """Run ``operation`` on the client; None when Redis is absent, failing or skipped."""
        if self.client is None or not self._may_try():
            return None
        try:
            result = operation(self.client)
        except redis.RedisError as exc:
            self._trip(exc)
            return None
        self._reset()
        return result

    @property
    def breaker_open(self) -> bool:
        return not self._closed_breaker

    def close(self) -> None:
        if self.client is not None:
            self.client.close()

    def _may_try(self) -> bool:
        """Closed breaker: yes. Open: only one caller per retry period gets to probe."""
        if self._closed_breaker:
            return True
        with self._lock:
            now = time.monotonic()
            if now < self._next_probe:
                return False
            self._next_probe = now + self.retry_seconds
            return True

    def _trip(self, exc: Exception) -> None:
        with self._lock:
            was_closed = self._closed_breaker
            self._closed_breaker = False
            self._next_probe = time.monotonic() + self.retry_seconds
        if was_closed:
            logger.warning(
                "Redis unavailable (%s); rate limits fail open, retrying in %.1f s",
                exc,
                self.retry_seconds,
            )

    def _reset(self) -> None:
        if self._closed_breaker:
            return
        with self._lock:
            self._closed_breaker = True
        logger.warning("Redis reachable again; rate limits enforced")
