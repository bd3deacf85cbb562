"""The relay's per-tenant state across rounds: the turn order, and tenants held back.

Fairness: every round gives each tenant with due events a share of the batch
(``service.events.outbox.due_heads``); ``TenantTurns.known`` remembers the small demands
of the last round (the rest goes to the backlogged tenants), and ``TenantTurns.after`` the
last tenant served, so when more tenants than the batch have work the next round starts
after it.

Queue full: tenant queues are declared ``x-overflow: reject-publish``: at
``x-max-length`` the broker refuses new messages with a ``basic.nack`` instead of
dropping the oldest. The relay reads a nack for a tenant as "that tenant's queue is
full": the refused event stays pending exactly as it was (not a failed attempt: its
``publish_try_count``, back-off and failure reason are untouched, so a worker that is
simply away never turns events into poison), its aggregate's later events wait behind it
as after any failure, and the tenant's events are left out of the relay's reads until a
back-off delay has passed (0.2 s, doubling up to 2 s). Other tenants are not held. The
first publish the broker confirms for the tenant ends the hold. No log per nack: one
warning when a hold starts and one line when it ends, at most once a minute per tenant (a
queue kept at its limit by a slow worker is held and released over and over).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Row

from service.messaging.connection import Backoff

log = logging.getLogger(__name__)

FIRST_DELAY_SECONDS = 0.2
MAX_DELAY_SECONDS = 2.0
LOG_EVERY_SECONDS = 60.0


@dataclass
class _Hold:
    since: float
    until: float
    refusals: int = 0
    backoff: Backoff = field(
        default_factory=lambda: Backoff(initial=FIRST_DELAY_SECONDS, maximum=MAX_DELAY_SECONDS)
    )


class QueueFullHolds:
    """Which tenants (``consumer_id``) the relay leaves out for now; one relay thread only."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._holds: dict[str, _Hold] = {}
        self._logged: dict[str, float] = {}  # tenant -> when its hold was last logged

    def held(self) -> list[str]:
        """The tenants whose back-off has not yet passed (their events are not read)."""
        now = self._clock()
        return [tenant for tenant, hold in self._holds.items() if hold.until > now]

    def next_release_in(self) -> float | None:
        """Seconds until the next held tenant may be tried again; None when none is held."""
        now = self._clock()
        waits = [hold.until - now for hold in self._holds.values() if hold.until > now]
        return min(waits) if waits else None

    def update(self, accepted: Iterable[str], refused: Iterable[str]) -> None:
        """After a round: tenants with a confirmed publish, tenants with a nacked one."""
        refused = set(refused)
        for tenant in set(accepted) - refused:
            self._release(tenant)
        for tenant in refused:
            self._refuse(tenant)

    def _refuse(self, tenant: str) -> None:
        now = self._clock()
        hold = self._holds.get(tenant)
        if hold is None:
            hold = self._holds[tenant] = _Hold(since=now, until=now)
            if self._loggable(tenant, now):
                log.warning(
                    "queue of consumer %s is full (the broker nacks its events): holding "
                    "them, retrying with back-off up to %.0fs",
                    tenant,
                    MAX_DELAY_SECONDS,
                )
        hold.refusals += 1
        hold.until = now + hold.backoff.next_delay()

    def _release(self, tenant: str) -> None:
        hold = self._holds.pop(tenant, None)
        if hold is not None and self._logged.get(tenant) == hold.since:
            log.info(
                "queue of consumer %s accepts again: held %.1fs, %d refused rounds",
                tenant,
                self._clock() - hold.since,
                hold.refusals,
            )

    def _loggable(self, tenant: str, now: float) -> bool:
        """True at most once per ``LOG_EVERY_SECONDS`` per tenant (and notes it)."""
        if now - self._logged.get(tenant, -LOG_EVERY_SECONDS) < LOG_EVERY_SECONDS:
            return False
        self._logged[tenant] = now
        return True


@dataclass
class TenantTurns:
    """Where the tenant rotation stands, and which tenants are held; one per relay."""

    holds: QueueFullHolds = field(default_factory=QueueFullHolds)
    after: str | None = None  # the last tenant served
    known: dict[str, int] = field(default_factory=dict)  # tenant -> quota, from its demand

    def served(self, heads: Sequence[Row[Any]]) -> None:
        """Remember the last tenant of this round's heads (they come in turn order), and
        the demand of the tenants that had fewer heads than their share.

        Such a tenant's next quota is twice what it had (so a growing trickle doubles its
        quota each round, and one that fills it gets an equal share again): the rest of
        the batch goes to the tenants with a backlog in the first read, instead of a
        second read handing them what the small ones left.
        """
        self.after = str(heads[-1].consumer_id) if heads else None
        counts: dict[str, int] = {}
        shares: dict[str, int] = {}
        for head in heads:
            tenant = str(head.consumer_id)
            counts[tenant] = counts.get(tenant, 0) + 1
            shares[tenant] = head.tenant_share
        self.known = {t: 2 * n for t, n in counts.items() if n < shares[t]}
