"""Tenant authentication: verify a parsed key once with bcrypt, then serve it from cache."""

from __future__ import annotations

import asyncio
import logging
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol
from uuid import UUID

from anyio.to_thread import run_sync as run_in_threadpool
from sqlalchemy import Engine

from service.auth import repository
from service.auth.cache import LastUsedTracker, VerificationCache
from service.auth.keys import ParsedKey, check_key
from service.kit.errors import Forbidden, ServiceUnavailable, TooManyRequests, Unauthorized
from service.ratelimit.limiter import auth_scope

logger = logging.getLogger(__name__)

INVALID_KEY = "Invalid API key; send an active key in the X-API-Key header"
DISABLED_CONSUMER = "This consumer is disabled; ask the operator to enable it"
THROTTLED = "Too many failed attempts for this API key prefix from your address; retry in a minute"
AUTH_BUSY = "Authentication is busy verifying other keys; retry in a second"
DEFAULT_BCRYPT_SLOTS = 2
BCRYPT_WAIT_SECONDS = 2.0
UNKNOWN_ADDRESS = "unknown"


@dataclass(frozen=True)
class AuthenticatedConsumer:
    """The tenant behind a verified X-API-Key."""

    consumer_id: UUID
    name: str
    key_id: UUID
    rate_limit_per_minute: int | None
    rate_limit_burst: int | None


@dataclass(frozen=True)
class Principal:
    """Who is calling: the operator, or a tenant."""

    is_admin: bool
    consumer: AuthenticatedConsumer | None = None


class FailureThrottle(Protocol):
    """Counts failed verifications per scope (``service.ratelimit.limiter.FailedAuthThrottle``)."""

    def is_blocked(self, scope: str) -> bool: ...

    def record_failure(self, scope: str) -> None: ...

    def remember_good(self, prefix: str, fingerprint: str) -> None: ...

    def is_known_good(self, prefix: str, fingerprint: str) -> bool: ...


class BcryptGate:
    """At most ``slots`` bcrypt checks at once in this process, on threads of its own.

    A caller waits for a slot on the event loop, holding no thread and no lock; waiting
    longer than ``wait_seconds`` is refused with 503. So cold bad keys can neither take
    every core nor starve the threadpool that every sync route shares.
    """

    def __init__(self, slots: int, wait_seconds: float = BCRYPT_WAIT_SECONDS) -> None:
        self.slots = slots
        self.wait_seconds = wait_seconds
        self._executor = ThreadPoolExecutor(max_workers=slots, thread_name_prefix="bcrypt")
        self._waits: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore]
        self._waits = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        self.in_use = 0
        self.peak = 0

    async def check(self, key: ParsedKey, key_hash: str) -> bool:
        """``check_key`` in a slot; ServiceUnavailable when none frees up in time."""
        loop = asyncio.get_running_loop()
        slots = self._waits.setdefault(loop, asyncio.Semaphore(self.slots))
        try:
            async with asyncio.timeout(self.wait_seconds):
                await slots.acquire()
        except TimeoutError:
            raise ServiceUnavailable(AUTH_BUSY, headers={"Retry-After": "1"}) from None
        try:
            # The executor has ``slots`` threads: the CPU bound holds even when a caller
            # is cancelled while its check still runs.
            return await loop.run_in_executor(self._executor, self._counted_check, key, key_hash)
        finally:
            slots.release()

    def _counted_check(self, key: ParsedKey, key_hash: str) -> bool:
        with self._lock:
            self.in_use += 1
            self.peak = max(self.peak, self.in_use)
        try:
            return check_key(key, key_hash)
        finally:
            with self._lock:
                self.in_use -= 1


@dataclass
class AuthState:
    """The per-app caches of the auth path, and the verifications in flight (one per key
    and address at a time; concurrent callers share its answer)."""

    cache: VerificationCache[AuthenticatedConsumer]
    bcrypt: BcryptGate = field(default_factory=lambda: BcryptGate(DEFAULT_BCRYPT_SLOTS))
    last_used: LastUsedTracker = field(default_factory=LastUsedTracker)
    verifying: dict[tuple[str, str, str], asyncio.Task[AuthenticatedConsumer]] = field(
        default_factory=dict
    )


@dataclass(frozen=True)
class KeyCaches:
    """What this instance remembers of keys: the verified ones (``AuthState``) and the ones
    the failed-auth throttle knows good. Issuing, rotating or revoking a key updates both."""

    state: AuthState
    throttle: FailureThrottle

    def remember_issued(self, key: ParsedKey) -> None:
        """Let the throttle recognise a new key, so strangers cannot lock it out."""
        self.throttle.remember_good(key.prefix, key.fingerprint)

    def evict_consumer(self, consumer_id: UUID) -> None:
        """Make this instance re-verify the consumer's keys on their next use."""
        self.state.cache.evict_consumer(consumer_id)


async def verify_and_cache(
    engine: Engine,
    key: ParsedKey,
    throttle: FailureThrottle,
    state: AuthState,
    client_address: str = UNKNOWN_ADDRESS,
) -> AuthenticatedConsumer:
    """The consumer of ``key``: from cache, else verified once (concurrent callers with the
    same key from the same address share the answer), then cached.

    Failures (a wrong key, no bcrypt slot in time) count against the key prefix from
    ``client_address``; a throttled scope is refused (429, no database or bcrypt work)
    unless the key is one known to be valid.
    """
    cached = state.cache.get(key)
    if cached is not None:
        return cached
    slot = (key.prefix, key.fingerprint, client_address)
    running = state.verifying.get(slot)
    if running is None:
        running = asyncio.get_running_loop().create_task(
            _verify(engine, key, throttle, state, client_address)
        )
        state.verifying[slot] = running
        running.add_done_callback(lambda _: state.verifying.pop(slot, None))
    # Shielded: a caller that goes away does not cancel the others' verification.
    return await asyncio.shield(running)


async def _verify(
    engine: Engine, key: ParsedKey, throttle: FailureThrottle, state: AuthState, address: str
) -> AuthenticatedConsumer:
    """Throttle, row, bcrypt, record: the short blocking steps in the threadpool, the wait
    for bcrypt on the loop. Cached only when no eviction (rotation, revocation, disabling)
    happened since before the key row was read."""
    scope = auth_scope(key.prefix, address)
    generation = state.cache.generation
    row = await run_in_threadpool(_admitted_row, engine, key, throttle, scope)
    try:
        if row is None or not row.is_active or row.is_expired:
            raise Unauthorized(INVALID_KEY)
        if row.key_hash != state.cache.verified_hash(key) and not await state.bcrypt.check(
            key, row.key_hash
        ):
            raise Unauthorized(INVALID_KEY)
    except (Unauthorized, ServiceUnavailable):
        await run_in_threadpool(throttle.record_failure, scope)
        raise
    if row.status != "active":
        raise Forbidden(DISABLED_CONSUMER)
    consumer = AuthenticatedConsumer(
        consumer_id=row.consumer_id,
        name=row.name,
        key_id=row.key_id,
        rate_limit_per_minute=row.rate_limit_per_minute,
        rate_limit_burst=row.rate_limit_burst,
    )
    await run_in_threadpool(throttle.remember_good, key.prefix, key.fingerprint)
    state.cache.put(key, consumer.consumer_id, consumer, row.key_hash, generation)
    return consumer


def _admitted_row(
    engine: Engine, key: ParsedKey, throttle: FailureThrottle, scope: str
) -> Any | None:
    """The key's row, unless ``scope`` is throttled and the key is not one known good."""
    if throttle.is_blocked(scope) and not throttle.is_known_good(key.prefix, key.fingerprint):
        raise TooManyRequests(THROTTLED, headers={"Retry-After": "60"})
    with engine.begin() as connection:
        return repository.find_key(connection, key.prefix)


def record_last_use(engine: Engine, key_id: UUID) -> None:
    """Write ``last_used_at``; a failure is logged, never raised."""
    try:
        with engine.begin() as connection:
            repository.touch_last_used(connection, key_id)
    except Exception:
        logger.warning("could not record last use of key %s", key_id, exc_info=True)
