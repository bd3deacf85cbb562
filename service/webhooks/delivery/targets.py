"""Where and how to sign for an endpoint: its URL and opened secrets, cached briefly.

A URL change or a rotation reaches the delivery process within ``TTL_SECONDS``; secrets are
opened once per load, not once per POST.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from uuid import UUID

from sqlalchemy import Engine

from service.webhooks import repository
from service.webhooks.signing import SecretBox, secret_bytes

TTL_SECONDS = 2.0


class EndpointGone(LookupError):
    """The endpoint no longer exists."""


@dataclass(frozen=True)
class EndpointTarget:
    """The URL to POST to and the HMAC keys to sign with (current first)."""

    url: str
    secret_keys: tuple[bytes, ...]
    loaded_at: float


class EndpointTargets:
    """A thread-safe, short-lived cache of endpoint targets."""

    def __init__(self, engine: Engine, box: SecretBox, ttl_seconds: float = TTL_SECONDS):
        self.engine = engine
        self.box = box
        self.ttl = ttl_seconds
        self._cache: dict[UUID, EndpointTarget] = {}
        self._lock = threading.Lock()

    def get(self, endpoint_id: UUID) -> EndpointTarget:
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(endpoint_id)
        if cached is not None and now - cached.loaded_at < self.ttl:
            return cached
        target = self._load(endpoint_id, now)
        with self._lock:
            self._cache[endpoint_id] = target
        return target

    def _load(self, endpoint_id: UUID, now: float) -> EndpointTarget:
        with self.engine.connect() as connection:
            row = repository.endpoint_for_delivery(connection, endpoint_id)
        if row is None:
            raise EndpointGone(f"webhook endpoint {endpoint_id} does not exist")
        keys = tuple(
            secret_bytes(self.box.open(bytes(sealed), str(endpoint_id)))
            for sealed in row.sealed_secrets or ()
        )
        return EndpointTarget(row.url, keys, now)
