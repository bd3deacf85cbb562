"""One signed POST to one endpoint (SPEC 8), on a kept-alive client per endpoint.

Each endpoint has its own httpx client (connection reuse, a pool no larger than the
endpoint's in-flight cap), with the destination guard on every new connection, redirects not
followed, ``FINTEGRATE_WEBHOOK_TIMEOUT_SECONDS`` and no proxy from the environment. The
answer's body is read no further than ``MAX_BODY_BYTES``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

import httpx

from service.messaging.messages import CONTENT_TYPE, SEQUENCE_HEADER
from service.webhooks.delivery.outcomes import AttemptResult
from service.webhooks.destinations import DestinationPolicy, GuardedBackend, Resolver
from service.webhooks.signing import sign

MAX_BODY_BYTES = 4096
USER_AGENT = "Fintegrate-Webhooks/1"


def delivery_headers(
    event_id: str, sequence: int, body: bytes, secret_keys: Sequence[bytes], timestamp: int
) -> dict[str, str]:
    """The headers of one attempt: Standard Webhooks' three, the sequence, the content type
    (the delivery adds ``traceparent`` when tracing is on)."""
    return {
        "webhook-id": event_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret_keys, event_id, timestamp, body),
        SEQUENCE_HEADER: str(sequence),
        "content-type": CONTENT_TYPE,
        "user-agent": USER_AGENT,
    }


class GuardedTransport(httpx.HTTPTransport):
    """httpx's transport whose every new connection goes through ``GuardedBackend``."""

    def __init__(
        self, policy: DestinationPolicy, resolver: Resolver | None = None, **kwargs: object
    ):
        super().__init__(**kwargs)  # type: ignore[arg-type]
        backend = GuardedBackend(policy) if resolver is None else GuardedBackend(policy, resolver)
        # httpx builds the httpcore pool itself; the backend is the one seam it leaves.
        self._pool._network_backend = backend


class EndpointClients:
    """One kept-alive client per endpoint (thread-safe); a changed URL host gets a new one."""

    def __init__(self, policy: DestinationPolicy, timeout_seconds: float, per_endpoint: int):
        self.policy = policy
        self.timeout = httpx.Timeout(timeout_seconds)
        self.limits = httpx.Limits(
            max_connections=per_endpoint, max_keepalive_connections=per_endpoint
        )
        self._clients: dict[str, httpx.Client] = {}
        self._lock = threading.Lock()

    def client(self, endpoint_id: str) -> httpx.Client:
        with self._lock:
            client = self._clients.get(endpoint_id)
            if client is None:
                client = httpx.Client(
                    transport=GuardedTransport(self.policy, limits=self.limits),
                    timeout=self.timeout,
                    follow_redirects=False,
                    trust_env=False,
                    headers={"accept-encoding": "identity"},  # raw bytes = the body's bytes
                )
                self._clients[endpoint_id] = client
            return client

    def close(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()


def post(client: httpx.Client, url: str, body: bytes, headers: Mapping[str, str]) -> AttemptResult:
    """POST ``body``; the status, the first 4 KiB of the answer, or the error."""
    started_at = datetime.now(UTC)
    started = time.monotonic()
    try:
        with client.stream("POST", url, content=body, headers=headers) as response:
            answer = _read_capped(response)
            return AttemptResult(
                started_at=started_at,
                duration_ms=_elapsed_ms(started),
                status_code=response.status_code,
                body=answer,
                retry_after=response.headers.get("retry-after"),
            )
    except httpx.HTTPError as exc:
        return AttemptResult(
            started_at=started_at,
            duration_ms=_elapsed_ms(started),
            error=f"{type(exc).__name__}: {exc}"[:500],
        )


def _read_capped(response: httpx.Response) -> str:
    """Up to MAX_BODY_BYTES of the body, decoded leniently; the rest is never read."""
    kept = bytearray()
    for chunk in response.iter_raw():
        kept += chunk
        if len(kept) >= MAX_BODY_BYTES:
            break
    return bytes(kept[:MAX_BODY_BYTES]).decode("utf-8", "replace").replace("\x00", "")


def _elapsed_ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
