"""Per-key rate limiting and failed-auth throttling in Redis, failing open.

The limiter is GCRA (a token bucket kept as one "theoretical arrival time") in one
atomic Lua script that reads Redis server time, so every API instance shares one clock
and one bucket. Refill rate is ``per_minute / 60`` tokens per second; the bucket holds
``burst`` tokens.

Redis is optional: with no URL, or when it times out, refuses or answers an error, the
decision comes from a token bucket in this process (``LocalBuckets``: same rate and
burst, per instance, carried on from the last state Redis reported), counted in
``fail_open_total`` and the Prometheus counter. The circuit breaker of
``service.ratelimit.store`` bounds what a dead Redis costs.
"""

from __future__ import annotations

import hmac
import math
import threading
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import Request
from prometheus_client import CollectorRegistry, Counter

from service.config import AuthSettings, RedisSettings
from service.kit.errors import TooManyRequests
from service.ratelimit.store import AsyncRedisStore, RedisStore

T = TypeVar("T")
RATE_KEY_PREFIX = "fintegrate:rl:"
AUTH_FAIL_KEY_PREFIX = "fintegrate:authfail:"
AUTH_GOOD_KEY_PREFIX = "fintegrate:authgood:"
KNOWN_GOOD_SECONDS = 7 * 24 * 3600
MAX_LOCAL_SCOPES = 100_000
STATE_HEADERS = "rate_limit_headers"
FAIL_OPEN_METRIC = "fintegrate_ratelimit_fail_open_total"

# GCRA. KEYS[1] bucket; ARGV[1] emission interval (us per token); ARGV[2] burst.
# Returns {allowed, remaining, reset_us, retry_after_us}.
GCRA_SCRIPT = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000000 + tonumber(now_parts[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - burst * interval
if now < allow_at then
  return {0, 0, math.ceil(tat - now), math.ceil(allow_at - now)}
end
local ttl_ms = math.ceil((new_tat - now) / 1000) + 1
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', ttl_ms)
local remaining = math.floor((now - allow_at) / interval + 1e-6)
return {1, remaining, math.ceil(new_tat - now), 0}
"""

# Fixed window: count failures, the window starts at the first one.
AUTH_FAIL_SCRIPT = """
local count = redis.call('INCR', KEYS[1])
if count == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return count
"""

_counters: weakref.WeakKeyDictionary[CollectorRegistry, Counter] = weakref.WeakKeyDictionary()
_counters_lock = threading.Lock()


def fail_open_counter(registry: CollectorRegistry) -> Counter:
    """The one fail-open counter of ``registry``, labelled by ``check``."""
    with _counters_lock:
        counter = _counters.get(registry)
        if counter is None:
            counter = Counter(
                FAIL_OPEN_METRIC,
                "Rate-limit and failed-auth decisions that failed open because Redis was unusable",
                ["check"],
                registry=registry,
            )
            _counters[registry] = counter
        return counter


@dataclass(frozen=True)
class RateDecision:
    """One limiter answer; seconds are rounded up."""

    allowed: bool
    limit: int
    remaining: int
    reset_seconds: int
    retry_after_seconds: int
    local: bool = False  # decided by this process's bucket while Redis could not


class _Guarded:
    """Shared plumbing: the fail-open counters."""

    check_name = ""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.fail_open_total = 0
        self._count_lock = threading.Lock()
        self._metric = fail_open_counter(registry).labels(self.check_name) if registry else None

    def _counted(self, result: T | None) -> T | None:
        if result is None:
            self._count_fail_open()
        return result

    def _count_fail_open(self) -> None:
        with self._count_lock:
            self.fail_open_total += 1
        if self._metric is not None:
            self._metric.inc()


class LocalBuckets:
    """GCRA in this process, the limiter's fallback while Redis cannot decide.

    Each bucket is its theoretical arrival time on the monotonic clock. Every decision
    Redis makes is mirrored here (``follow``), so a bucket Redis emptied stays empty when
    Redis goes away; a bucket never seen starts full. Per instance: N API instances allow
    up to N times the limit between them while Redis is unusable. Event-loop only.
    """

    def __init__(self, max_buckets: int = MAX_LOCAL_SCOPES) -> None:
        self.max_buckets = max_buckets
        self._tats: OrderedDict[str, float] = OrderedDict()

    def follow(self, bucket: str, reset_us: int) -> None:
        """Mirror Redis' state of ``bucket``: full again ``reset_us`` from now."""
        self._store(bucket, time.monotonic() + reset_us / 1_000_000)

    def take(self, bucket: str, per_minute: int, burst: int) -> tuple[int, int, int, int]:
        """One token from ``bucket``, answered as the GCRA script answers (microseconds)."""
        now = time.monotonic()
        interval = 60.0 / per_minute
        tat = max(self._tats.get(bucket, now), now)
        new_tat = tat + interval
        allow_at = new_tat - burst * interval
        if now < allow_at:
            return 0, 0, _micros(tat - now), _micros(allow_at - now)
        self._store(bucket, new_tat)
        remaining = math.floor((now - allow_at) / interval + 1e-6)
        return 1, remaining, _micros(new_tat - now), 0

    def _store(self, bucket: str, tat: float) -> None:
        self._tats[bucket] = tat
        self._tats.move_to_end(bucket)
        while len(self._tats) > self.max_buckets:
            self._tats.popitem(last=False)


class RateLimiter(_Guarded):
    """GCRA limiter on the event loop: ``await check(bucket, per_minute, burst)``."""

    check_name = "rate_limit"

    def __init__(self, redis: RedisSettings, registry: CollectorRegistry | None = None) -> None:
        super().__init__(registry)
        self.store = AsyncRedisStore(redis)
        self.store.register(GCRA_SCRIPT)
        self.local = LocalBuckets()

    async def check(self, bucket: str, per_minute: int, burst: int) -> RateDecision:
        """Take one token from ``bucket``: in Redis, or in this process when Redis cannot
        decide (``decision.local``, counted as a fail-open)."""
        interval_us = 60_000_000 / per_minute
        key = RATE_KEY_PREFIX + bucket
        raw = await self.store.run_script(GCRA_SCRIPT, [key], [interval_us, burst])
        if raw is None:
            self._count_fail_open()
            allowed, remaining, reset_us, retry_us = self.local.take(bucket, per_minute, burst)
        else:
            allowed, remaining, reset_us, retry_us = (int(value) for value in raw)
            self.local.follow(bucket, reset_us)
        return RateDecision(
            allowed=bool(allowed),
            limit=burst,
            remaining=remaining,
            reset_seconds=_ceil_seconds(reset_us),
            retry_after_seconds=max(1, _ceil_seconds(retry_us)) if not allowed else 0,
            local=raw is None,
        )

    async def close(self) -> None:
        await self.store.close()


class LocalWindowCounter:
    """The in-process twin of ``AUTH_FAIL_SCRIPT``: fixed windows per scope, bounded in size.

    It keeps counting while Redis is unusable, so failed verifications (and their bcrypt)
    stay throttled per process instead of unlimited.
    """

    def __init__(self, window_seconds: float, max_scopes: int = MAX_LOCAL_SCOPES) -> None:
        self.window = window_seconds
        self.max_scopes = max_scopes
        self._windows: OrderedDict[str, tuple[float, int]] = OrderedDict()
        self._lock = threading.Lock()

    def count(self, scope: str) -> int:
        """Failures of ``scope`` in its current window."""
        with self._lock:
            entry = self._windows.get(scope)
            return entry[1] if entry is not None and entry[0] > time.monotonic() else 0

    def add(self, scope: str) -> None:
        """Count one failure of ``scope``; the least recently failed scope goes when full."""
        now = time.monotonic()
        with self._lock:
            ends, count = self._windows.get(scope, (0.0, 0))
            self._windows[scope] = (ends, count + 1) if ends > now else (now + self.window, 1)
            self._windows.move_to_end(scope)
            while len(self._windows) > self.max_scopes:
                self._windows.popitem(last=False)


class FailedAuthThrottle(_Guarded):
    """Blocks a scope after ``failed_auth_limit`` failures per window (fixed window).

    A scope is a key prefix together with the client address (``auth_scope``), so a
    stranger's bad secrets cost the key holder nothing elsewhere. Counts live in Redis
    (shared by every instance) and in process (the fallback while Redis is unusable).
    Keys that verified once are remembered by fingerprint (sha256 of the whole key, never
    the key), so the holder of the correct secret passes even from a throttled address.
    Blocking calls: it runs where bcrypt runs, in a worker thread.
    """

    check_name = "failed_auth"

    def __init__(
        self, redis: RedisSettings, auth: AuthSettings, registry: CollectorRegistry | None = None
    ) -> None:
        super().__init__(registry)
        self.store = RedisStore(redis)
        self.store.register(AUTH_FAIL_SCRIPT)
        self.limit = auth.failed_limit
        self.window_seconds = auth.failed_window_seconds
        self.local = LocalWindowCounter(auth.failed_window_seconds)
        self._known_good: OrderedDict[str, str] = OrderedDict()
        self._known_lock = threading.Lock()

    def is_blocked(self, scope: str) -> bool:
        """True when ``scope`` reached the failure limit in the current window."""
        key = AUTH_FAIL_KEY_PREFIX + scope
        count: Any = self._counted(self.store.call(lambda client: client.get(key) or b"0"))
        if count is None:
            count = self.local.count(scope)
        return int(count) >= self.limit

    def record_failure(self, scope: str) -> None:
        """Count one failed authentication for ``scope``."""
        self.local.add(scope)
        window = self.window_seconds
        key = AUTH_FAIL_KEY_PREFIX + scope
        self._counted(self.store.run_script(AUTH_FAIL_SCRIPT, [key], [window]))

    def remember_good(self, prefix: str, fingerprint: str) -> None:
        """Record the fingerprint of the key that is valid for ``prefix``."""
        with self._known_lock:
            self._known_good[prefix] = fingerprint
            self._known_good.move_to_end(prefix)
            while len(self._known_good) > MAX_LOCAL_SCOPES:
                self._known_good.popitem(last=False)
        key = AUTH_GOOD_KEY_PREFIX + prefix
        self.store.call(lambda client: client.set(key, fingerprint, ex=KNOWN_GOOD_SECONDS))

    def is_known_good(self, prefix: str, fingerprint: str) -> bool:
        """True when ``fingerprint`` is the one last verified or issued for ``prefix``."""
        with self._known_lock:
            if self._known_good.get(prefix) == fingerprint:
                return True
        key = AUTH_GOOD_KEY_PREFIX + prefix
        stored: Any = self.store.call(lambda client: client.get(key))
        return stored is not None and hmac.compare_digest(stored, fingerprint.encode())

    def close(self) -> None:
        self.store.close()


def auth_scope(subject: str, client_address: str) -> str:
    """The throttle scope of one subject (a key prefix, or ``admin``) from one address."""
    return f"{subject}|{client_address}"


def _ceil_seconds(microseconds: int) -> int:
    return math.ceil(microseconds / 1_000_000)


def _micros(seconds: float) -> int:
    return math.ceil(seconds * 1_000_000)


def rate_limit_headers(decision: RateDecision) -> dict[str, str]:
    """The X-RateLimit-* headers of a decision."""
    return {
        "X-RateLimit-Limit": str(decision.limit),
        "X-RateLimit-Remaining": str(decision.remaining),
        "X-RateLimit-Reset": str(decision.reset_seconds),
    }


async def enforce_rate_limit(request: Request, bucket: str, per_minute: int, burst: int) -> None:
    """Take a token for ``bucket`` or raise TooManyRequests; records headers on request.state."""
    limiter: RateLimiter = request.app.state.rate_limiter
    decision = await limiter.check(bucket, per_minute, burst)
    headers = rate_limit_headers(decision)
    setattr(request.state, STATE_HEADERS, headers)
    if not decision.allowed:
        retry_after = decision.retry_after_seconds
        raise TooManyRequests(
            description=(
                f"Rate limit exceeded: {per_minute} requests per minute with a burst of "
                f"{burst} for this API key; retry after {retry_after} s"
            ),
            headers={**headers, "Retry-After": str(retry_after)},
        )
