"""Partition leases in PostgreSQL: which relay publishes which part of the outbox.

Events fall into ``P`` partitions by a hash of their aggregate
(``fintegrate_aggregate_partition``), so one aggregate is always in one partition. A
relay publishes only the partitions it leases:

- ``relay_members``: one row per running relay, its heartbeat and its ``P``. The live
  members (heartbeat younger than the TTL) split the partitions evenly: each takes up to
  ``ceil(P / live)``; one that holds more gives the extra back between two rounds.
- ``relay_partitions``: one row per partition: owner, ``fencing_token`` (+1 on every
  change of owner) and ``lease_expires_at`` on PostgreSQL's clock. A free or expired
  partition is taken with ``UPDATE … FOR UPDATE SKIP LOCKED``; a dead relay's partitions
  expire and are taken over within the TTL plus one heartbeat.
- Fencing: the relay publishes a partition only while its local deadline holds (the
  monotonic time before the acquiring or renewing transaction began + TTL - a safety
  margin, so it ends before PostgreSQL can hand the lease on), checked by ``holds`` right
  before every ``basic_publish`` (a slow ``connect()`` cannot outrun it); a lease is noted
  held only after its transaction committed; and it records outcomes only through ``fence``,
  which key-share-locks the lease rows still held with the round's tokens: a takeover
  (``SELECT … FOR UPDATE SKIP LOCKED``) skips them until that record commits, while the
  keeper's renewals (plain ``UPDATE`` of non-key columns) do not wait for it. A relay
  whose lease was taken over can neither publish nor mark after the new owner started.

Renewals run on a keeper thread so a long round (a slow broker) keeps its leases; taking
and giving back partitions happens in the relay's own thread, between rounds.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, Row, text
from sqlalchemy.exc import DBAPIError

from service.events.outbox import MARK_PUBLISHED, row_keys
from service.kit.errors import first_line

log = logging.getLogger(__name__)

SAFETY_FRACTION = 0.25
MAX_SAFETY_SECONDS = 2.0
STALE_MEMBER_TTLS = 10
RECHECK_HEARTBEATS = 10  # a settled relay still rebalances this often (stale members, drift)

ENSURE_PARTITIONS = text(
    """
    INSERT INTO relay_partitions (partition_no)
    SELECT generate_series(0, CAST(:partitions AS integer) - 1)
    ON CONFLICT (partition_no) DO NOTHING
    """
)
UPSERT_MEMBER = text(
    """
    INSERT INTO relay_members (relay_id, partition_count, hostname, pid)
    VALUES (:relay_id, :partitions, :hostname, :pid)
    ON CONFLICT (relay_id) DO UPDATE SET heartbeat_at = now()
    """
)
RENEW = text(
    """
    UPDATE relay_partitions
    SET lease_expires_at = now() + make_interval(secs => CAST(:ttl AS float8))
    WHERE owner_id = :relay_id AND partition_no = ANY(CAST(:partitions AS integer[]))
    RETURNING partition_no, fencing_token
    """
)
MEMBERSHIP = text(
    """
    SELECT count(*) AS live,
           coalesce(bool_or(partition_count <> :partitions), false) AS mismatch
    FROM relay_members
    WHERE heartbeat_at > now() - make_interval(secs => CAST(:ttl AS float8))
    """
)
FORGET_STALE_MEMBERS = text(
    """
    DELETE FROM relay_members
    WHERE heartbeat_at < now() - make_interval(secs => CAST(:ttl AS float8) * :ttls)
    """
)
# ``previous_owner`` is set when the partition is taken from a relay whose lease expired
# (a takeover), NULL when it was free (given back cleanly, or never held).
ACQUIRE = text(
    """
    UPDATE relay_partitions p
    SET owner_id = :relay_id, fencing_token = p.fencing_token + 1, acquired_at = now(),
        lease_expires_at = now() + make_interval(secs => CAST(:ttl AS float8))
    FROM (
        SELECT partition_no, owner_id AS previous_owner FROM relay_partitions
        WHERE partition_no < :partitions
          AND (owner_id IS NULL OR lease_expires_at < now())
        ORDER BY partition_no
        LIMIT :wanted
        FOR UPDATE SKIP LOCKED) AS free
    WHERE p.partition_no = free.partition_no
    RETURNING p.partition_no, p.fencing_token, free.previous_owner
    """
)
RELEASE = text(
    """
    UPDATE relay_partitions SET owner_id = NULL, lease_expires_at = NULL
    WHERE owner_id = :relay_id AND partition_no = ANY(CAST(:partitions AS integer[]))
    """
)
LEAVE = text("DELETE FROM relay_members WHERE relay_id = :relay_id")
SUMMARY = text(
    """
    SELECT (SELECT count(*) FROM relay_members
            WHERE heartbeat_at > now() - make_interval(secs => CAST(:ttl AS float8))) AS live,
           count(*) AS partitions,
           count(*) FILTER (WHERE owner_id IS NOT NULL AND lease_expires_at > now()) AS leased
    FROM relay_partitions
    """
)
FENCE = text(
    """
    SELECT p.partition_no
    FROM relay_partitions p
    JOIN unnest(CAST(:partitions AS integer[]), CAST(:tokens AS bigint[])) AS t(no, token)
      ON p.partition_no = t.no AND p.fencing_token = t.token
    WHERE p.owner_id = :relay_id
    FOR KEY SHARE OF p
    """
)

# The record of a round whose every event was confirmed, as one statement: ``FENCE``, then
# ``MARK_PUBLISHED`` of the rows in the partitions still ours. One statement is one
# transaction, so on an autocommit connection it costs one round trip (a BEGIN, the fence,
# the marking and a COMMIT were four), and the lease rows stay key-share-locked until the
# marks are committed, as in the caller's transaction ``fence`` needs.
FENCED_MARK_PUBLISHED = text(
    "WITH ours AS ("  # noqa: S608 - constant fragments
    + FENCE.text
    + "), marked AS ("
    + MARK_PUBLISHED.text
    + """
      AND fintegrate_aggregate_partition(consumer_id, customer_id, :partition_count)
          IN (SELECT partition_no FROM ours)
    RETURNING 1)
    SELECT partition_no FROM ours
    """
)


def lease_summary(connection: Connection, ttl_seconds: float) -> Row[Any]:
    """Live relays, partitions known and partitions under a valid lease (for `doctor`)."""
    return connection.execute(SUMMARY, {"ttl": ttl_seconds}).one()


@dataclass(frozen=True)
class Tenure:
    """The partitions held for one round, each with its fencing token.

    ``taken_over``: those taken from a relay whose lease had expired rather than given
    back; that relay may still have messages on their way to the broker.
    """

    tokens: dict[int, int]
    taken_over: frozenset[int] = frozenset()

    @property
    def partitions(self) -> list[int]:
        return sorted(self.tokens)


@dataclass
class _Lease:
    token: int
    valid_until: float
    taken_over: bool = False


class PartitionLeases:
    """This relay's share of the partitions; thread-safe."""

    def __init__(
        self,
        engine: Engine,
        partitions: int,
        ttl_seconds: float,
        heartbeat_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.engine = engine
        self.partition_count = partitions
        self.ttl = ttl_seconds
        self.heartbeat_seconds = heartbeat_seconds
        self.relay_id = str(uuid.uuid4())
        self._clock = clock
        self._safety = min(MAX_SAFETY_SECONDS, ttl_seconds * SAFETY_FRACTION)
        self._held: dict[int, _Lease] = {}
        self._lock = threading.Lock()
        self._joined = False
        self._keeper: threading.Thread | None = None
        self._keeper_stop = threading.Event()
        self._rebalanced_at = -math.inf
        self._membership_seen: Row[Any] | None = None  # the latest read, by either thread
        self._membership_used: int | None = None  # live relays the last rebalance shared by

    # -- membership ----------------------------------------------------------------------

    def join(self, renew_in_background: bool = True) -> None:
        """Register this relay, take its share, and (by default) start renewing on a thread."""
        with self.engine.begin() as connection:
            connection.execute(ENSURE_PARTITIONS, {"partitions": self.partition_count})
            self._heartbeat_member(connection)
        self._joined = True
        self.rebalance()
        if not renew_in_background:
            return
        self._keeper_stop.clear()
        self._keeper = threading.Thread(target=self._keep, name="relay-leases", daemon=True)
        self._keeper.start()

    def leave(self) -> None:
        """Give every partition back and deregister (a clean stop hands over at once)."""
        self._keeper_stop.set()
        if self._keeper is not None:
            self._keeper.join(timeout=self.ttl)
            self._keeper = None
        if not self._joined:
            return
        self._joined = False
        held = self._drop_all()
        try:
            with self.engine.begin() as connection:
                self._release(connection, held)
                connection.execute(LEAVE, {"relay_id": self.relay_id})
        except DBAPIError as exc:  # the leases then simply expire
            log.warning("could not release relay partitions: %s", first_line(exc))

    @property
    def joined(self) -> bool:
        return self._joined

    # -- the relay's view ----------------------------------------------------------------

    def tenure(self) -> Tenure:
        """The partitions this relay may publish now, with their tokens."""
        now = self._clock()
        with self._lock:
            valid = {no: lease for no, lease in self._held.items() if lease.valid_until > now}
        return Tenure(
            {no: lease.token for no, lease in valid.items()},
            frozenset(no for no, lease in valid.items() if lease.taken_over),
        )

    def holds(self, partition: int, token: int) -> bool:
        """True while ``partition`` is held with ``token`` and its local deadline holds.

        A lock and a clock read, no database: the relay asks it right before each publish.
        """
        now = self._clock()
        with self._lock:
            lease = self._held.get(partition)
            return lease is not None and lease.token == token and lease.valid_until > now

    def still_held(self, tenure: Tenure) -> set[int]:
        """The partitions of ``tenure`` still held with the same token and not expired."""
        now = self._clock()
        with self._lock:
            return {
                no
                for no, token in tenure.tokens.items()
                if (lease := self._held.get(no)) is not None
                and lease.token == token
                and lease.valid_until > now
            }

    def fence(self, connection: Connection, tenure: Tenure) -> set[int]:
        """In the caller's transaction: the partitions of ``tenure`` still ours in PostgreSQL.

        The lease rows are key-share-locked, so no relay can take them over before the
        caller's transaction (which records this round's outcomes) has committed.
        """
        if not tenure.tokens:
            return set()
        return set(connection.execute(FENCE, self._fence_params(tenure)).scalars())

    def fence_and_mark_published(
        self, connection: Connection, tenure: Tenure, rows: Sequence[Row[Any]]
    ) -> set[int]:
        """``fence``, and the rows of the partitions still ours marked published, in one
        statement: atomic on its own, so ``connection`` may be in autocommit."""
        if not tenure.tokens:
            return set()
        params = {
            **self._fence_params(tenure),
            "partition_count": self.partition_count,
            **row_keys(rows),
        }
        return set(connection.execute(FENCED_MARK_PUBLISHED, params).scalars())

    def _fence_params(self, tenure: Tenure) -> dict[str, Any]:
        """``FENCE``'s parameters: this relay and the partitions of ``tenure`` with their
        tokens."""
        partitions = tenure.partitions
        return {
            "relay_id": self.relay_id,
            "partitions": partitions,
            "tokens": [tenure.tokens[no] for no in partitions],
        }

    # -- renewal and balance -------------------------------------------------------------

    def rebalance_if_due(self) -> None:
        """Rebalance between rounds, at most once per heartbeat, when there is a reason.

        The keeper reads the membership with every renewal, so the relay's own thread
        (whose rounds carry the events' latency) goes to the database only when this relay
        holds other than its share, the live relays changed, or every
        ``RECHECK_HEARTBEATS`` heartbeats anyway.
        """
        since = self._clock() - self._rebalanced_at
        if since < self.heartbeat_seconds:
            return
        if self._settled() and since < self.heartbeat_seconds * RECHECK_HEARTBEATS:
            return
        self.rebalance()

    def _settled(self) -> bool:
        """True when the keeper's last view matches the last rebalance's and the share is held."""
        seen = self._membership_seen
        if seen is None or seen.mismatch or seen.live != self._membership_used:
            return False
        with self._lock:
            return len(self._held) == math.ceil(self.partition_count / max(1, seen.live))

    def rebalance(self) -> None:
        """Take up to this relay's fair share of free or expired partitions; give back extras.

        The local deadline of a partition taken counts from before the transaction began
        (PostgreSQL's ``now()`` in the lease is that transaction's start), and the lease is
        noted as held only once the transaction has committed.
        """
        started = self._rebalanced_at = self._clock()
        acquired: list[Row[Any]] = []
        with self.engine.begin() as connection:
            connection.execute(FORGET_STALE_MEMBERS, {"ttl": self.ttl, "ttls": STALE_MEMBER_TTLS})
            membership = self._membership(connection)
            self._membership_used = membership.live
            if membership.mismatch:
                log.error(
                    "another live relay uses a different FINTEGRATE_RELAY_PARTITIONS; "
                    "this relay (%d) publishes nothing until they agree",
                    self.partition_count,
                )
                self._release(connection, self._drop_all())
                return
            share = math.ceil(self.partition_count / max(1, membership.live))
            with self._lock:
                extra = sorted(self._held)[share:]
                wanted = share - len(self._held)
            if extra:
                self._release(connection, extra)
            elif wanted > 0:
                acquired = self._acquire(connection, wanted)
        self._note_acquired(acquired, started + self.ttl - self._safety)

    def renew(self) -> None:
        """Extend the leases held when the renewal starts; forget the ones taken over.

        Only those partitions are renewed and judged: one taken by a concurrent rebalance
        meanwhile is left alone (it was not in the answer only because it was not ours yet),
        and a row this relay owns but no longer counts as held is not kept alive: it
        expires and another relay takes it.
        """
        started = self._clock()
        with self._lock:
            snapshot = {no: lease.token for no, lease in self._held.items()}
        params = {"relay_id": self.relay_id, "ttl": self.ttl, "partitions": sorted(snapshot)}
        with self.engine.begin() as connection:
            self._heartbeat_member(connection)
            rows = connection.execute(RENEW, params).all()
            self._membership(connection)
        renewed = {row.partition_no: row.fencing_token for row in rows}
        valid_until = started + self.ttl - self._safety
        with self._lock:
            for no, token in snapshot.items():
                lease = self._held.get(no)
                if lease is None or lease.token != token:
                    continue  # given back or taken again since the snapshot
                if renewed.get(no) == token:
                    lease.valid_until = max(lease.valid_until, valid_until)
                else:
                    log.warning("lease on partition %d was lost", no)
                    del self._held[no]

    def _keep(self) -> None:
        while not self._keeper_stop.wait(self.heartbeat_seconds):
            try:
                self.renew()
            except DBAPIError as exc:
                log.warning("lease renewal failed: %s", first_line(exc))
            except Exception:  # never let the keeper die silently
                log.exception("lease renewal failed unexpectedly")

    # -- SQL helpers ---------------------------------------------------------------------

    def _membership(self, connection: Connection) -> Row[Any]:
        """Live relays and whether one uses another partition count; remembered as seen."""
        params = {"partitions": self.partition_count, "ttl": self.ttl}
        membership = connection.execute(MEMBERSHIP, params).one()
        self._membership_seen = membership
        return membership

    def _heartbeat_member(self, connection: Connection) -> None:
        connection.execute(
            UPSERT_MEMBER,
            {
                "relay_id": self.relay_id,
                "partitions": self.partition_count,
                "hostname": socket.gethostname(),
                "pid": os.getpid(),
            },
        )

    def _acquire(self, connection: Connection, wanted: int) -> list[Row[Any]]:
        """Take up to ``wanted`` free or expired partitions (noted held by the caller)."""
        params = {
            "relay_id": self.relay_id,
            "ttl": self.ttl,
            "partitions": self.partition_count,
            "wanted": wanted,
        }
        return list(connection.execute(ACQUIRE, params).all())

    def _note_acquired(self, rows: list[Row[Any]], valid_until: float) -> None:
        """After the acquiring commit: the partitions taken are held until ``valid_until``."""
        if not rows:
            return
        with self._lock:
            for row in rows:
                taken_over = row.previous_owner is not None
                self._held[row.partition_no] = _Lease(row.fencing_token, valid_until, taken_over)
        log.info(
            "relay took partitions %s (taken over from an expired lease: %s)",
            sorted(row.partition_no for row in rows),
            sorted(row.partition_no for row in rows if row.previous_owner is not None) or "none",
        )

    def _release(self, connection: Connection, partitions: Iterable[int]) -> None:
        released = sorted(partitions)
        if not released:
            return
        with self._lock:
            for no in released:
                self._held.pop(no, None)
        connection.execute(RELEASE, {"relay_id": self.relay_id, "partitions": released})
        log.info("relay gave back partitions %s", released)

    def _drop_all(self) -> list[int]:
        with self._lock:
            held, self._held = sorted(self._held), {}
        return held
