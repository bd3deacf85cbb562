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
from service.errors import Forbidden, TooManyRequests, Unauthorized

logger = logging.getLogger(__name__)

INVALID_KEY = "Invalid API key; send an active key in the X-API-Key header"
DISABLED_CONSUMER = "This consumer is disabled; ask the operator to enable it"
THROTTLED = "Too many failed attempts for this API key prefix; retry in a minute"
VERIFY_LOCK_STRIPES = 64


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
    """Counts failed verifications per prefix (``service.ratelimit.FailedAuthThrottle``)."""

    def is_blocked(self, prefix: str) -> bool: ...

    def record_failure(self, prefix: str) -> None: ...


@dataclass
class AuthState:
    """The per-app caches of the auth path, and locks so one key is verified once at a time."""

    cache: VerificationCache[AuthenticatedConsumer]
    last_used: LastUsedTracker = field(default_factory=LastUsedTracker)
    locks: tuple[threading.Lock, ...] = field(
        default_factory=lambda: tuple(threading.Lock() for _ in range(VERIFY_LOCK_STRIPES))
    )

    def lock_for(self, key: ParsedKey) -> threading.Lock:
        return self.locks[hash(key.fingerprint) % len(self.locks)]


def verify_key(
    engine: Engine, key: ParsedKey, throttle: FailureThrottle, verified_hash: str | None = None
) -> tuple[AuthenticatedConsumer, str]:
    """Look the key up by prefix and check it with bcrypt; raise 401/403/429 on refusal.

    bcrypt is skipped when the stored hash is ``verified_hash``, the one this exact key
    already matched. Returns the consumer and the stored hash.
    """
    if throttle.is_blocked(key.prefix):
        raise TooManyRequests(THROTTLED, headers={"Retry-After": "60"})
    with engine.begin() as connection:
        row = repository.find_key(connection, key.prefix)
    if (
        row is None
        or not row.is_active
        or row.is_expired
        or not (row.key_hash == verified_hash or check_key(key, row.key_hash))
    ):
        throttle.record_failure(key.prefix)
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
    engine: Engine, key: ParsedKey, throttle: FailureThrottle, state: AuthState
) -> AuthenticatedConsumer:
    """``verify_key`` once per key at a time (concurrent callers share the answer); cache it."""
    with state.lock_for(key):
        cached = state.cache.get(key)
        if cached is not None:
            return cached
        consumer, key_hash = verify_key(engine, key, throttle, state.cache.verified_hash(key))
        state.cache.put(key, consumer.consumer_id, consumer, key_hash)
        return consumer


def record_last_use(engine: Engine, key_id: UUID) -> None:
    """Write ``last_used_at``; a failure is logged, never raised."""
    try:
        with engine.begin() as connection:
            repository.touch_last_used(connection, key_id)
    except Exception:
        logger.warning("could not record last use of key %s", key_id, exc_info=True)
