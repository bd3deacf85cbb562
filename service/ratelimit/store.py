"""Redis clients behind a circuit breaker, for checks that must never wait on Redis.

Short connect/read timeouts and no client retries bound the cost of one failure; after
``redis_breaker_failures`` failed round trips in a row, the breaker skips Redis for
``redis_retry_seconds``, then lets one caller probe.
``RedisStore`` is the blocking client (failed-auth throttle, in worker threads);
``AsyncRedisStore`` the asyncio one (the per-request rate limit, on the event loop), on
one pipelined connection of its own (``service.ratelimit.resp``): the scripts that
callers start in the same loop iteration go out as one write and come back as one read.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.connection import parse_url
from redis.exceptions import NoScriptError
from redis.retry import Retry

from service.config import RedisSettings
from service.ratelimit.resp import Command, RespConnection

logger = logging.getLogger(__name__)

T = TypeVar("T")


class CircuitBreaker:
    """Closed: every call goes to Redis. Open: one probe per ``retry_seconds``.

    It opens after ``failures_to_open`` failed round trips in a row, so one late reply (a
    busy event loop, a slow fsync) costs only that round trip; while it is half open, one
    failed probe opens it again.
    """

    def __init__(self, retry_seconds: float, failures_to_open: int = 1) -> None:
        self.retry_seconds = retry_seconds
        self.failures_to_open = failures_to_open
        self._lock = threading.Lock()
        self._closed = True
        self._failures = 0
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
        """Count one failed round trip; open at the threshold (or on a failed probe)."""
        with self._lock:
            self._failures += 1
            opens = self._closed and self._failures >= self.failures_to_open
            if opens or not self._closed:
                self._closed = False
                self._next_probe = time.monotonic() + self.retry_seconds
        if opens:
            logger.warning(
                "Redis unavailable (%s, %d failures in a row); rate limits fall back to this "
                "process, retrying in %.1f s",
                str(exc) or type(exc).__name__,
                self._failures,
                self.retry_seconds,
            )

    def reset(self) -> None:
        """A round trip succeeded: the failure count starts again, an open breaker closes."""
        if self._closed and not self._failures:
            return
        with self._lock:
            was_open = not self._closed
            self._closed = True
            self._failures = 0
        if was_open:
            logger.warning("Redis reachable again; shared rate limits enforced")


def client_options(settings: RedisSettings) -> dict[str, Any]:
    """Timeouts of both clients: one failure costs at most ``timeout_seconds``."""
    return {
        "socket_connect_timeout": settings.timeout_seconds,
        "socket_timeout": settings.timeout_seconds,
        "health_check_interval": 0,
    }


class _Guarded:
    """What both stores share: the breaker in front of Redis."""

    def __init__(self, settings: RedisSettings) -> None:
        self.breaker = CircuitBreaker(settings.retry_seconds, settings.breaker_failures)

    @property
    def breaker_open(self) -> bool:
        return self.breaker.is_open


class RedisStore(_Guarded):
    """A blocking Redis client behind a breaker; ``call`` answers None instead of failing."""

    def __init__(self, settings: RedisSettings) -> None:
        super().__init__(settings)
        self._scripts: dict[str, Any] = {}
        self.client: redis.Redis | None = None
        if settings.url:
            self.client = redis.Redis.from_url(
                settings.url, retry=Retry(NoBackoff(), 0), **client_options(settings)
            )

    def register(self, source: str) -> None:
        """Prepare a Lua script for ``run_script`` (EVALSHA, loading it on NOSCRIPT)."""
        if self.client is not None:
            self._scripts[source] = self.client.register_script(source)

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


class AsyncRedisStore(_Guarded):
    """The asyncio twin of ``RedisStore`` for scripts: same timeouts, same kind of breaker.

    Scripts go over one pipelined ``RespConnection`` (``service.ratelimit.resp``), opened
    on first use and again after any failure.
    """

    def __init__(self, settings: RedisSettings) -> None:
        super().__init__(settings)
        # Parsed here: a malformed URL fails at start-up, not on every request.
        self._url_options = parse_url(settings.url) if settings.url else None
        self.timeout = settings.timeout_seconds
        self._shas: dict[str, str] = {}
        self._waiting: list[_Script] = []
        self._flushes: set[asyncio.Task[None]] = set()
        self._connection: RespConnection | None = None
        self._connecting = asyncio.Lock()

    def register(self, source: str) -> None:
        """Prepare a Lua script for ``run_script`` (EVALSHA, loading it on NOSCRIPT)."""
        self._shas[source] = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()

    async def run_script(self, source: str, keys: list[str], args: list[Any]) -> Any | None:
        """Run a registered script; None when Redis is absent, failing or skipped.

        The run joins the pipeline of this loop iteration; the first caller starts it.
        """
        if self._url_options is None or not self.breaker.may_try():
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
        """Send every waiting run as one pipeline.

        A lost connection or a timeout fails every run of the batch (None); an error reply
        (``OOM``, ``WRONGTYPE``) fails only its own caller. A batch with no good reply counts
        as one failed round trip for the breaker.
        """
        batch, self._waiting = self._waiting, []
        results: list[Any] = [None] * len(batch)
        try:
            results = await self._pipeline(batch)
        except (redis.RedisError, OSError, TimeoutError) as exc:
            self._drop_connection()
            self.breaker.trip(exc)
        else:
            errors = [result for result in results if isinstance(result, Exception)]
            if errors:
                logger.warning(
                    "Redis answered %d of %d rate-limit scripts with an error: %s",
                    len(errors),
                    len(results),
                    errors[0],
                )
            if len(errors) == len(results):
                self.breaker.trip(errors[0])
            else:
                self.breaker.reset()
        finally:
            for script, result in zip(batch, results, strict=True):
                if not script.answer.done():
                    script.answer.set_result(None if isinstance(result, Exception) else result)

    async def _pipeline(self, batch: list[_Script]) -> list[Any]:
        """EVALSHA each run in one round trip; scripts Redis lost are loaded and rerun.

        Error replies stay in place, one per caller."""
        results = await self._evalsha(batch)
        lost = [index for index, result in enumerate(results) if isinstance(result, NoScriptError)]
        if lost:
            sources = sorted({batch[index].source for index in lost})
            await self._execute([("SCRIPT", "LOAD", source) for source in sources])
            rerun = await self._evalsha([batch[index] for index in lost])
            for index, result in zip(lost, rerun, strict=True):
                results[index] = result
        return results

    async def _evalsha(self, batch: list[_Script]) -> list[Any]:
        """The replies of ``batch`` in order, error replies in place."""
        return await self._execute(
            [
                ("EVALSHA", self._shas[script.source], len(script.keys), *script.keys, *script.args)
                for script in batch
            ]
        )

    async def _execute(self, commands: list[Command]) -> list[Any]:
        """Send ``commands`` at once; their replies within one ``redis_timeout_seconds``."""
        connection = await self._open_connection()
        async with asyncio.timeout(self.timeout):
            return await connection.replies(connection.send(commands))

    async def _open_connection(self) -> RespConnection:
        connection = self._connection
        if connection is not None and connection.is_open:
            return connection
        assert self._url_options is not None
        async with self._connecting:
            if self._connection is None or not self._connection.is_open:
                self._connection = await RespConnection.open(self._url_options, self.timeout)
            return self._connection

    def _drop_connection(self) -> None:
        """After a failure or timeout: replies still owed must never answer later commands."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    async def close(self) -> None:
        self._drop_connection()
