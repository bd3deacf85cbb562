"""Delivery receipts from the worker: ``POST /events/confirm-delivery`` with patient retries."""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Callable

import httpx

from service.messaging.connection import Backoff

log = logging.getLogger(__name__)

CONFIRM_PATH = "/events/confirm-delivery"
HTTP_TIMEOUT_SECONDS = 5.0
MAX_RETRY_DELAY_SECONDS = 10.0


class Receipt(enum.Enum):
    """How a confirmation ended."""

    RECORDED = "recorded"  # 200: stored now or before (duplicate)
    REFUSED = "refused"  # 4xx: unknown to this tenant (404) or invalid; retrying cannot help
    ABANDONED = "abandoned"  # stopping while the API was unavailable: leave unacked


class WorkerUnauthorized(Exception):
    """The API refuses this worker's credentials (401/403): the worker must stop."""


class DeliveryConfirmer:
    """Confirms events as one tenant; retries 429, 5xx and transport errors until ``stop``."""

    def __init__(
        self,
        api_url: str,
        api_key: str,
        stop: threading.Event,
        sleep: Callable[[float], None] | None = None,
        transport: httpx.BaseTransport | None = None,
    ):
        self.stop = stop
        self._sleep = sleep or stop.wait
        self._http = httpx.Client(
            base_url=api_url.rstrip("/"),
            headers={"X-API-Key": api_key, "User-Agent": "fintegrate-consumer"},
            timeout=HTTP_TIMEOUT_SECONDS,
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    def confirm(self, event_id: str, status: str, detail: str | None = None) -> Receipt:
        """Record the receipt; blocks with bounded backoff while the API is unavailable."""
        body = {"event_id": event_id, "status": status, "detail": detail}
        backoff = Backoff(initial=0.2, maximum=MAX_RETRY_DELAY_SECONDS)
        while True:
            outcome = self._attempt(body)
            if outcome is not None:
                return outcome
            if self.stop.is_set():
                return Receipt.ABANDONED
            self._sleep(backoff.next_delay())
            if self.stop.is_set():
                return Receipt.ABANDONED

    def _attempt(self, body: dict[str, str | None]) -> Receipt | None:
        """One POST: the outcome, or None when it is worth retrying."""
        try:
            response = self._http.post(CONFIRM_PATH, json=body)
        except httpx.HTTPError as exc:
            log.warning("confirm-delivery for %s failed: %r; retrying", body["event_id"], exc)
            return None
        if response.status_code == 200:
            return Receipt.RECORDED
        if response.status_code in (401, 403):
            raise WorkerUnauthorized(
                f"API refused the worker's key ({response.status_code}): "
                f"{_description(response)}; set FINTEGRATE_API_KEY to this tenant's active key"
            )
        if response.status_code == 429 or response.status_code >= 500:
            log.warning("confirm-delivery answered %s; retrying", response.status_code)
            return None
        log.error(
            "confirm-delivery refused %s (%s): %s",
            body["event_id"],
            response.status_code,
            _description(response),
        )
        return Receipt.REFUSED


def _description(response: httpx.Response) -> str:
    try:
        return str(response.json()["detail"]["status_description"])
    except (ValueError, KeyError, TypeError):
        return response.reason_phrase
