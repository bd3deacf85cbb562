"""In-process caches of the auth path: positive verifications and last-use throttling.

``VerificationCache`` remembers a successful bcrypt check for ``ttl_seconds``
(FINTEGRATE_AUTH_CACHE_TTL_SECONDS). That TTL is the bound within which a rotated, revoked
or disabled key stops working on *other* API instances; the instance that performs the
change evicts at once. An expired entry keeps the hash the key was verified against, so
re-validation after the TTL is a row lookup, not another bcrypt (``verified_hash``).

Revocation holds against a race: every eviction bumps ``generation``. A verification reads
it before it reads the key row and hands it to ``put``; when an eviction happened in
between (the row it read may be stale), the result is not cached.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Generic, TypeVar
from uuid import UUID

from service.auth.keys import ParsedKey

V = TypeVar("V")
MAX_CACHED_KEYS = 10_000
LAST_USED_INTERVAL_SECONDS = 60.0


class VerificationCache(Generic[V]):
    """A bounded TTL map ``(prefix, sha256(key)) -> verified value``; thread-safe."""

    def __init__(self, ttl_seconds: float, max_entries: int = MAX_CACHED_KEYS) -> None:
        self.ttl = ttl_seconds
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[str, str], tuple[float, UUID, V, str]] = OrderedDict()
        self._lock = threading.Lock()
        self._generation = 0

    @property
    def generation(self) -> int:
        """How many evictions happened so far; read it before reading a key row."""
        return self._generation

    def get(self, key: ParsedKey) -> V | None:
        """The cached value of ``key`` while fresh, else None."""
        with self._lock:
            entry = self._entries.get((key.prefix, key.fingerprint))
            if entry is None or entry[0] <= time.monotonic():
                return None
            return entry[2]

    def verified_hash(self, key: ParsedKey) -> str | None:
        """The stored hash ``key`` was last verified against, fresh or expired (not evicted)."""
        with self._lock:
            entry = self._entries.get((key.prefix, key.fingerprint))
            return entry[3] if entry is not None else None

    def put(
        self, key: ParsedKey, consumer_id: UUID, value: V, key_hash: str, generation: int
    ) -> bool:
        """Remember a verification against ``key_hash``, read at ``generation``; the oldest
        entry goes when full. False (nothing cached) when an eviction happened since.

        With a TTL of 0 the entry is born expired: every request re-validates the row.
        """
        with self._lock:
            if generation != self._generation:
                return False
            self._entries[(key.prefix, key.fingerprint)] = (
                time.monotonic() + self.ttl,
                consumer_id,
                value,
                key_hash,
            )
            self._entries.move_to_end((key.prefix, key.fingerprint))
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
            return True

    def evict_consumer(self, consumer_id: UUID) -> None:
        """Forget every key of ``consumer_id`` (after rotation, revocation or disabling)."""
        with self._lock:
            self._generation += 1
            stale = [slot for slot, entry in self._entries.items() if entry[1] == consumer_id]
            for slot in stale:
                del self._entries[slot]

    def __len__(self) -> int:
        return len(self._entries)


class LastUsedTracker:
    """Decides when ``last_used_at`` is due a write: at most once per interval per key."""

    def __init__(
        self,
        interval_seconds: float = LAST_USED_INTERVAL_SECONDS,
        max_entries: int = MAX_CACHED_KEYS,
    ) -> None:
        self.interval = interval_seconds
        self.max_entries = max_entries
        self._written: OrderedDict[UUID, float] = OrderedDict()
        self._lock = threading.Lock()

    def due(self, key_id: UUID) -> bool:
        """True (and the write counted as done) when ``key_id`` was not written recently."""
        now = time.monotonic()
        with self._lock:
            last = self._written.get(key_id)
            if last is not None and now - last < self.interval:
                return False
            self._written[key_id] = now
            self._written.move_to_end(key_id)
            while len(self._written) > self.max_entries:
                self._written.popitem(last=False)
            return True
