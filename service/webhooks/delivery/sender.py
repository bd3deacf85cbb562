"""One signed POST to one endpoint (SPEC 8), on a kept-alive connection pool per endpoint.

Each endpoint has its own httpcore pool (connection reuse, no more connections than the
endpoint's in-flight cap), with the destination guard on every new connection,
``FINTEGRATE_WEBHOOK_TIMEOUT_SECONDS`` on each phase (pool, connect, write, read), one TLS
context for all of them and no proxy. httpcore follows no redirects; the answer's body is
read no further than ``MAX_BODY_BYTES``. httpcore rather than httpx: the POST is the
delivery process's hottest path, and it uses none of httpx's layers above the pool (URL
and header models, auth, redirects, cookies).
"""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

import httpcore
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


# What a failed exchange raises (httpcore's errors share no base class).
TRANSPORT_ERRORS = (
    httpcore.TimeoutException,
    httpcore.NetworkError,
    httpcore.ProtocolError,
    httpcore.UnsupportedProtocol,
    httpcore.ProxyError,
)


def guarded_pool(
    policy: DestinationPolicy,
    per_endpoint: int,
    ssl_context: ssl.SSLContext | None = None,
    resolver: Resolver | None = None,
) -> httpcore.ConnectionPool:
    """A connection pool whose every new connection goes through ``GuardedBackend``."""
    backend = GuardedBackend(policy) if resolver is None else GuardedBackend(policy, resolver)
    return httpcore.ConnectionPool(
        ssl_context=ssl_context or httpx.create_ssl_context(trust_env=False),
        max_connections=per_endpoint,
        max_keepalive_connections=per_endpoint,
        retries=0,
        network_backend=backend,
    )


class EndpointClients:
    """One kept-alive connection pool per endpoint (thread-safe), one TLS context for all."""

    def __init__(self, policy: DestinationPolicy, timeout_seconds: float, per_endpoint: int):
        self.policy = policy
        self.per_endpoint = per_endpoint
        self.timeout = dict.fromkeys(("pool", "connect", "read", "write"), timeout_seconds)
        # Loading the CA bundle takes tens of milliseconds: once, not once per endpoint.
        self.ssl_context = httpx.create_ssl_context(trust_env=False)
        self._clients: dict[str, httpcore.ConnectionPool] = {}
        self._lock = threading.Lock()

    def client(self, endpoint_id: str) -> httpcore.ConnectionPool:
        with self._lock:
            client = self._clients.get(endpoint_id)
            if client is None:
                client = guarded_pool(self.policy, self.per_endpoint, self.ssl_context)
                self._clients[endpoint_id] = client
            return client

    def close(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()


def post(
    client: httpcore.ConnectionPool,
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    timeout: Mapping[str, float],
) -> AttemptResult:
    """POST ``body``; the status, the first 4 KiB of the answer, or the error."""
    started_at = datetime.now(UTC)
    started = time.monotonic()
    sent = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()]
    sent.append((b"accept-encoding", b"identity"))  # raw bytes = the body's bytes
    try:
        with client.stream(
            "POST", url, headers=sent, content=body, extensions={"timeout": dict(timeout)}
        ) as response:
            answer = _read_capped(response)
            return AttemptResult(
                started_at=started_at,
                duration_ms=_elapsed_ms(started),
                status_code=response.status,
                body=answer,
                retry_after=_header(response.headers, b"retry-after"),
            )
    except TRANSPORT_ERRORS as exc:
        return AttemptResult(
            started_at=started_at,
            duration_ms=_elapsed_ms(started),
            error=f"{type(exc).__name__}: {exc}"[:500],
        )


def _read_capped(response: httpcore.Response) -> str:
    """Up to MAX_BODY_BYTES of the body, decoded leniently; the rest is never read."""
    kept = bytearray()
    for chunk in response.iter_stream():
        kept += chunk
        if len(kept) >= MAX_BODY_BYTES:
            break
    return bytes(kept[:MAX_BODY_BYTES]).decode("utf-8", "replace").replace("\x00", "")


def _header(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> str | None:
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def _elapsed_ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
