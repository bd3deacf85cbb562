"""The HTTP side of rate limiting: X-RateLimit-* headers on every response.

``enforce_rate_limit`` records a request's headers in its state; the edge middleware
(``service.http.middleware``) adds them, with ``with_rate_limit_headers``, to whatever
answer leaves the app, error envelopes included.
"""

from __future__ import annotations

from typing import Any

from service.ratelimit.limiter import STATE_HEADERS

RawHeaders = list[tuple[bytes, bytes]]


def with_rate_limit_headers(raw: RawHeaders, state: dict[str, Any]) -> RawHeaders:
    """``raw`` and the request's X-RateLimit-* headers that ``raw`` does not set already."""
    extra: dict[str, str] | None = state.get(STATE_HEADERS)
    if not extra:
        return raw
    present = {name.lower() for name, _ in raw}
    added = [
        (name.lower().encode("latin-1"), value.encode("latin-1"))
        for name, value in extra.items()
        if name.lower().encode("latin-1") not in present
    ]
    return [*raw, *added]
