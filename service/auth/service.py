"""Tenant authentication: verify a parsed key once with bcrypt, then serve it from cache."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Protocol
from uuid import UUID

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
VERIFY_LOCK_STRIPES = 64
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
    """At most ``slots`` bcrypt checks at once in this process; waiting longer than
    ``wait_seconds`` for a slot is refused with 503, so bad keys cannot take every core."""

    def __init__(self, slots: int, wait_seconds: float = BCRYPT_WAIT_SECONDS) -> None:
        self.wait_seconds = wait_seconds
        self._slots = threading.BoundedSemaphore(slots)
        self._lock = threading.Lock()
        self.in_use = 0
        self.peak = 0

    def check(self, key: ParsedKey, key_hash: str) -> bool:
        """``check_key`` in a slot; ServiceUnavailable when none frees up in time."""
        if not self._slots.acquire(timeout=self.wait_seconds):
            raise ServiceUnavailable(AUTH_BUSY, headers={"Retry-After": "1"})
        with self._lock:
            self.in_use += 1
            self.peak = max(self.peak, self.in_use)
        try:
            return check_key(key, key_hash)
        finally:
            with self._lock:
                self.in_use -= 1
            self._slots.release()


@dataclass
class AuthState:
    """The per-app caches of the auth path, and locks so one key is verified once at a time."""

    cache: VerificationCache[AuthenticatedConsumer]
    bcrypt: BcryptGate = field(default_factory=lambda: BcryptGate(DEFAULT_BCRYPT_SLOTS))
    last_used: LastUsedTracker = field(default_factory=LastUsedTracker)
    locks: tuple[threading.Lock, ...] = field(
        default_factory=lambda: tuple(threading.Lock() for _ in range(VERIFY_LOCK_STRIPES))
    )

    def lock_for(self, key: ParsedKey) -> threading.Lock:
        return self.locks[hash(key.fingerprint) % len(self.locks)]


def verify_key(
    engine: Engine, key: ParsedKey, verified_hash: str | None = None, gate: BcryptGate | None = None
) -> tuple[AuthenticatedConsumer, str]:
    """Look the key up by prefix and check it with bcrypt; raise 401/403 on refusal.

    bcrypt is skipped when the stored hash is ``verified_hash``, the one this exact key
    already matched. Returns the consumer and the stored hash.
    """
    with engine.begin() as connection:
        row = repository.find_key(connection, key.prefix)
    if row is None or not row.is_active or row.is_expired:
        raise Unauthorized(INVALID_KEY)
    if row.key_hash != verified_hash and not (gate.check if gate else check_key)(key, row.key_hash):
        raise Unauthorized(INVALID_KEY)
    if row.status != "active":
        raise Forbidden(DISABLED_CONSUMER)
    consumer = AuthenticatedConsumer(
        consumer_id=row.consumer_id,
        name=row.name,
        key_id=row.key_id,
        rate_limit_per_minute=row.rate_limit_per_minute,
        rate_limit_burst=row.rate_limit_burst,
    )
    return consumer, row.key_hash


def verify_and_cache(
    engine: Engine,
    key: ParsedKey,
    throttle: FailureThrottle,
    state: AuthState,
    client_address: str = UNKNOWN_ADDRESS,
) -> AuthenticatedConsumer:
    """``verify_key`` once per key at a time (concurrent callers share the answer); cache it.

    Failures count against the key prefix from ``client_address``; a throttled scope is
    refused (429, no database or bcrypt work) unless the key is one known to be valid.
    The result is cached only when no eviction (rotation, revocation, disabling) happened
    since before the key row was read.
    """
    with state.lock_for(key):
        cached = state.cache.get(key)
        if cached is not None:
            return cached
        scope = auth_scope(key.prefix, client_address)
        if throttle.is_blocked(scope) and not throttle.is_known_good(key.prefix, key.fingerprint):
            raise TooManyRequests(THROTTLED, headers={"Retry-After": "60"})
        generation = state.cache.generation
        try:
            consumer, key_hash = verify_key(
                engine, key, state.cache.verified_hash(key), state.bcrypt
            )
        except Unauthorized:
            throttle.record_failure(scope)
            raise
        throttle.remember_good(key.prefix, key.fingerprint)
        state.cache.put(key, consumer.consumer_id, consumer, key_hash, generation)
        return consumer


def record_last_use(engine: Engine, key_id: UUID) -> None:
    """Write ``last_used_at``; a failure is logged, never raised."""
    try:
        with engine.begin() as connection:
            repository.touch_last_used(connection, key_id)
    except Exception:
        logger.warning("could not record last use of key %s", key_id, exc_info=True)
