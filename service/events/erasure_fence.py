"""The erasure fence: no publisher sends a pre-erasure payload after an erasure answered.

A publisher reads its rows (payloads included) some time before it sends them; an erasure
committing in between would otherwise be followed by the old payload on the wire. Around
each wave the fence therefore, on a connection of its own:

1. releases the previous wave's locks (that wave is confirmed, or given up);
2. takes a shared advisory lock per customer of the wave (the erasure's lock);
3. re-reads the wave's payloads in a statement of its own, so it sees any erasure that
   committed while it waited, and hands those rows to the broker.

The relay runs that transaction on its round's connection (``ErasureFence.on``): no pool
checkout (and its ping) per wave, and the first wave goes into the round's read
transaction, still open, so steps 1 and 2 cost nothing more there; steps 2 and 3 are one
round trip of two statements, each with its own snapshot.

The erasure takes the same lock exclusively before it redacts: it waits for a wave in
flight (bounded by its lock timeout, then 503), and a wave starting meanwhile waits for
the erasure's commit and sends the redacted payload. Only erasure contends for these
locks; the publisher's other statements and row locks are untouched.
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any, cast

from sqlalchemy import Connection, Engine, RootTransaction, Row

from service.events.repository import current_payloads_of_publish

Wave = list[Row[Any]]
WaveFilter = Callable[[Wave], Wave]


class ErasureFence:
    """``with ErasureFence(engine) as fence: publish_runs(..., fence.around(filter))``."""

    def __init__(
        self,
        engine: Engine | None,
        within: Connection | None = None,
        idle: Connection | None = None,
    ) -> None:
        self._engine = engine
        self._within = within
        self._idle = idle
        self._connection: Connection | None = None
        self._transaction: RootTransaction | None = None
        self._first_wave_opened = False  # the first wave goes into ``_transaction`` as it is

    @classmethod
    def within(cls, connection: Connection) -> ErasureFence:
        """A fence on the caller's transaction (the API's resend and redeliver): its locks
        last until that transaction ends, after the whole republish."""
        return cls(None, within=connection)

    @classmethod
    def on(cls, connection: Connection, opened: RootTransaction | None = None) -> ErasureFence:
        """A fence whose transactions run on ``connection``, which must be idle (no
        transaction of the caller's) until the fence is released; or, with ``opened``, the
        caller's transaction on it that the fence takes over: the first wave is held in it
        (the relay's read, a commit and a begin fewer per round), and it ends with the
        fence's first release."""
        fence = cls(None, idle=connection)
        fence._transaction = opened
        fence._first_wave_opened = opened is not None
        return fence

    def __enter__(self) -> ErasureFence:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def around(self, wave_filter: WaveFilter | None = None) -> WaveFilter:
        """``wave_filter`` (if any), then the fence, before each wave."""

        def fenced(wave: Wave) -> Wave:
            if self._first_wave_opened:
                self._first_wave_opened = False
            else:
                self.release()
            rows = wave if wave_filter is None else wave_filter(wave)
            return self.hold(rows)

        return fenced

    def hold(self, rows: Wave) -> Wave:
        """Lock the rows' customers and answer the rows with their current payloads."""
        customers = sorted({str(row.customer_id) for row in rows if row.customer_id is not None})
        if not customers:
            return rows
        connection = self._within if self._within is not None else self._begin()
        payloads = current_payloads_of_publish(
            connection, customers, [row.event_id for row in rows]
        )
        return [
            _with_payload(row, payloads[row.event_id]) if row.event_id in payloads else row
            for row in rows
        ]

    def _begin(self) -> Connection:
        """A transaction of the fence's own, on the idle connection or a fresh one (or the
        one taken over, still open)."""
        if self._transaction is not None and self._idle is not None:
            return self._idle
        connection = self._idle
        if connection is None:
            assert self._engine is not None
            connection = self._connection = self._engine.connect()
        self._transaction = connection.begin()
        return connection

    def release(self) -> None:
        """End the held transaction (its locks go with it)."""
        transaction, connection = self._transaction, self._connection
        self._transaction = self._connection = None
        try:
            if transaction is not None and transaction.is_active:
                transaction.rollback()
        finally:
            if connection is not None:
                connection.close()


def _with_payload(row: Row[Any], payload: Any) -> Row[Any]:
    """The row as the publisher reads it (attributes), with the payload read just now."""
    return cast(Row[Any], SimpleNamespace(**{**row._mapping, "payload_json": payload}))
