"""Redis clients behind a circuit breaker, for checks that must fail open.

Short connect/read timeouts and no client retries bound the cost of one failure; after
it, the breaker skips Redis for ``redis_retry_seconds``, then lets one caller probe.
``RedisStore`` is the blocking client (failed-auth throttle, in worker threads);
``AsyncRedisStore`` the asyncio one (the per-request rate limit, on the event loop). The
asyncio store sends the scripts that callers start in the same loop iteration as one
pipeline: one write and one read for all of them instead of one round trip each.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple, TypeVar

import redis
import redis.asyncio
import redis.asyncio.retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError
from redis.retry import Retry

from service.config import Settings

logger = logging.getLogger(__name__)

T = TypeVar("T")


class CircuitBreaker:
    """Closed: every call goes to Redis. Open: one probe per ``retry_seconds``."""

    def __init__(self, retry_seconds: float) -> None:
        self.retry_seconds = retry_seconds
        self._lock = threading.Lock()
        self._closed = True
        self._next_probe = 0.0

    @property
    def is_open(self) -> bool:
        return not self._closed

    def may_try(self) -> bool:
        """Closed breaker: yes. Open: only one caller per retry period gets to probe."""
        if self._closed:
            return True
        with self._lock:
            now = time.monotonic()
            if now < self._next_probe:
                return False
            self._next_probe = now + self.retry_seconds
            return True

    def trip(self, exc: Exception) -> None:
        with self._lock:
            was_closed = self._closed
            self._closed = False
            self._next_probe = time.monotonic() + self.retry_seconds
        if was_closed:
            logger.warning(
                "Redis unavailable (%s); rate limits fail open, retrying in %.1f s",
                exc,
                self.retry_seconds,
            )

    def reset(self) -> None:
        if self._closed:
            return
        with self._lock:
            self._closed = True
        logger.warning("Redis reachable again; rate limits enforced")


def client_options(settings: Settings) -> dict[str, Any]:
    """Timeouts of both clients: one failure costs at most ``redis_timeout_seconds``."""
    return {
        "socket_connect_timeout": settings.redis_timeout_seconds,
        "socket_timeout": settings.redis_timeout_seconds,
        "health_check_interval": 0,
    }


class _GuardedClient:
    """What both stores share: the breaker and the registered scripts."""

    client: Any

    def __init__(self, settings: Settings) -> None:
        self.breaker = CircuitBreaker(settings.redis_retry_seconds)
        self._scripts: dict[str, Any] = {}

    def register(self, source: str) -> None:
        """Prepare a Lua script for ``run_script`` (EVALSHA, loading it on NOSCRIPT)."""
        if self.client is not None:
            self._scripts[source] = self.client.register_script(source)

    @property
    def breaker_open(self) -> bool:
        return self.breaker.is_open


class RedisStore(_GuardedClient):
    """A blocking Redis client behind a breaker; ``call`` answers None instead of failing."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.client: redis.Redis | None = None
        if settings.redis_url:
            self.client = redis.Redis.from_url(
                settings.redis_url, retry=Retry(NoBackoff(), 0), **client_options(settings)
            )

    def run_script(self, source: str, keys: list[str], args: list[Any]) -> Any | None:
        """Run a registered script; None when Redis is absent, failing or skipped."""
        return self.call(lambda client: self._scripts[source](keys=keys, args=args, client=client))

    def call(self, operation: Callable[[redis.Redis], T]) -> T | None:
        """Run ``operation`` on the client; None when Redis is absent, failing or skipped."""
        if self.client is None or not self.breaker.may_try():
            return None
        try:
            result = operation(self.client)
        except redis.RedisError as exc:
            self.breaker.trip(exc)
            return None
        self.breaker.reset()
        return result

    def close(self) -> None:
        if self.client is not None:
            self.client.close()


class _Script(NamedTuple):
    """One caller's script run, waiting for the pipeline that carries it."""

    source: str
    keys: list[str]
    args: list[Any]
    answer: asyncio.Future[Any]


class AsyncRedisStore(_GuardedClient):
    """The asyncio twin of ``RedisStore``: same timeouts, same kind of breaker."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.client: redis.asyncio.Redis | None = None
        self._waiting: list[_Script] = []
        self._flushes: set[asyncio.Task[None]] = set()
        if settings.redis_url:
            self.client = redis.asyncio.Redis.from_url(
                settings.redis_url,
                retry=redis.asyncio.retry.Retry(NoBackoff(), 0),
                **client_options(settings),
            )

    async def run_script(self, source: str, keys: list[str], args: list[Any]) -> Any | None:
        """Run a registered script; None when Redis is absent, failing or skipped.

        The run joins the pipeline of this loop iteration; the first caller starts it.
        """
        if self.client is None or not self.breaker.may_try():
            return None
        loop = asyncio.get_running_loop()
        script = _Script(source, keys, args, loop.create_future())
        self._waiting.append(script)
        if len(self._waiting) == 1:
            flush = loop.create_task(self._flush())
            self._flushes.add(flush)
            flush.add_done_callback(self._flushes.discard)
        return await script.answer

    async def _flush(self) -> None:
        """Send every waiting run as one pipeline; all of them fail open together."""
        batch, self._waiting = self._waiting, []
        results: list[Any] = [None] * len(batch)
        try:
            results = await self._pipeline(batch)
        except (redis.RedisError, OSError, TimeoutError) as exc:
            self.breaker.trip(exc)
        else:
            self.breaker.reset()
        finally:
            for script, result in zip(batch, results, strict=True):
                if not script.answer.done():
                    script.answer.set_result(result)

    async def _pipeline(self, batch: list[_Script]) -> list[Any]:
        """EVALSHA each run in one round trip; scripts Redis lost are loaded and rerun."""
        results = await self._evalsha(batch)
        lost = [index for index, result in enumerate(results) if isinstance(result, NoScriptError)]
        if lost:
            assert self.client is not None
            for source in {batch[index].source for index in lost}:
                await self.client.script_load(source)
            rerun = await self._evalsha([batch[index] for index in lost])
            for index, result in zip(lost, rerun, strict=True):
                results[index] = result
        for result in results:
            if isinstance(result, Exception):
                raise result
        return results

    async def _evalsha(self, batch: list[_Script]) -> list[Any]:
        """The replies of ``batch`` in order, errors in place; a single run skips the pipeline."""
        assert self.client is not None
        if len(batch) == 1:
            return [await self._evalsha_one(batch[0])]
        pipe = self.client.pipeline(transaction=False)
        for script in batch:
            pipe.execute_command(*self._evalsha_command(script))
        return list(await pipe.execute(raise_on_error=False))

    async def _evalsha_one(self, script: _Script) -> Any:
        assert self.client is not None
        try:
            return await self.client.execute_command(*self._evalsha_command(script))
        except NoScriptError as exc:
            return exc

    def _evalsha_command(self, script: _Script) -> list[Any]:
        sha = self._scripts[script.source].sha
        return ["EVALSHA", sha, len(script.keys), *script.keys, *script.args]

    async def call(self, operation: Callable[[redis.asyncio.Redis], Awaitable[T]]) -> T | None:
        """Await ``operation`` on the client; None when Redis is absent, failing or skipped."""
        if self.client is None or not self.breaker.may_try():
            return None
        try:
            result = await operation(self.client)
        except (redis.RedisError, OSError, TimeoutError) as exc:
            self.breaker.trip(exc)
            return None
        self.breaker.reset()
        return result

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose()
