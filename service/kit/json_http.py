"""JSON over keep-alive HTTP/1.1 from the standard library, for a loop that calls one API.

The worker sends one receipt per event: through httpx such a call cost 1.3 ms of the
worker's CPU, through ``http.client`` 0.5 ms (docs/benchmarks.md), and at 200 events/s
that difference is a twelfth of a two-core machine. ``JsonHttp`` keeps idle connections
for any thread to take, sends a request once more on a fresh connection when a kept one
turns out closed by the server (its keep-alive timeout; so only requests that may be
sent twice use it), and goes through httpx when the environment names a proxy for the
URL, which ``http.client`` does not follow.
"""

from __future__ import annotations

import http.client
import json
import ssl
import threading
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx

KEPT_IDLE = 32  # idle connections kept; more threads than this open and close their own
# what a kept connection the server closed while it sat idle raises on its next request
CLOSED_ERRORS = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)


class HttpTransportError(Exception):
    """The request got no answer: refused, reset, timed out, or not HTTP."""


class _ClosedWhileIdle(HttpTransportError):
    """A connection was closed by the server: on a kept one, worth one more try."""


@dataclass(frozen=True)
class JsonResponse:
    """What came back: the status, its reason and the body."""

    status_code: int
    reason_phrase: str
    content: bytes

    def json(self) -> Any:
        """The body as JSON (ValueError when it is not)."""
        return json.loads(self.content)


class JsonHttp:
    """Requests to one base URL with fixed headers; thread-safe."""

    def __init__(self, base_url: str, headers: Mapping[str, str], timeout: float):
        parts = urlsplit(base_url.rstrip("/"))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{base_url!r} is not an http(s) URL")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._https else 80)
        self._prefix = parts.path
        self._headers = {**headers, "Content-Type": "application/json"}
        self._timeout = timeout
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._closed = False
        self._context = ssl.create_default_context() if self._https else None
        self._proxied = (
            httpx.Client(base_url=base_url, headers=dict(headers), timeout=timeout)
            if _proxy_applies(parts.scheme, self._host)
            else None
        )

    def post(self, path: str, body: Any, headers: Mapping[str, str] | None = None) -> JsonResponse:
        """POST ``body`` as JSON. Sent twice at most: only for idempotent endpoints."""
        return self.request("POST", path, json.dumps(body).encode(), headers)

    def get(self, path: str, params: Mapping[str, Any] | None = None) -> JsonResponse:
        query = f"?{urlencode(params, doseq=True)}" if params else ""
        return self.request("GET", path + query)

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> JsonResponse:
        """One request; HttpTransportError when no answer came."""
        merged = {**self._headers, **headers} if headers else self._headers
        if self._proxied is not None:
            return _through_httpx(self._proxied, method, path, body, merged)
        connection, kept = self._take()
        try:
            return self._send(connection, method, path, body, merged)
        except _ClosedWhileIdle:
            if not kept:
                raise
        return self._send(self._open(), method, path, body, merged)  # once more, fresh

    def close(self) -> None:
        """Close the idle connections (those in use close when they come back)."""
        with self._lock:
            idle, self._idle, self._closed = self._idle, [], True
        for connection in idle:
            connection.close()
        if self._proxied is not None:
            self._proxied.close()

    def _send(
        self,
        connection: http.client.HTTPConnection,
        method: str,
        path: str,
        body: bytes | None,
        headers: Mapping[str, str],
    ) -> JsonResponse:
        """One exchange; the connection goes back to the idle ones if it stays open."""
        try:
            connection.request(method, self._prefix + path, body=body, headers=headers)
            answer = connection.getresponse()
            response = JsonResponse(answer.status, answer.reason, answer.read())
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            failure = _ClosedWhileIdle if isinstance(exc, CLOSED_ERRORS) else HttpTransportError
            raise failure(repr(exc)) from exc
        self._give_back(connection, reusable=not answer.will_close)
        return response

    def _take(self) -> tuple[http.client.HTTPConnection, bool]:
        """An idle connection (kept: True) or a new one."""
        with self._lock:
            if self._idle:
                return self._idle.pop(), True
        return self._open(), False

    def _open(self) -> http.client.HTTPConnection:
        if self._https:
            return http.client.HTTPSConnection(
                self._host, self._port, timeout=self._timeout, context=self._context
            )
        return http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)

    def _give_back(self, connection: http.client.HTTPConnection, reusable: bool) -> None:
        with self._lock:
            if reusable and not self._closed and len(self._idle) < KEPT_IDLE:
                self._idle.append(connection)
                return
        connection.close()


def _through_httpx(
    client: httpx.Client, method: str, path: str, body: bytes | None, headers: Mapping[str, str]
) -> JsonResponse:
    try:
        answer = client.request(method, path, content=body, headers=headers)
    except httpx.HTTPError as exc:
        raise HttpTransportError(repr(exc)) from exc
    return JsonResponse(answer.status_code, answer.reason_phrase, answer.content)


def _proxy_applies(scheme: str, host: str) -> bool:
    """Whether the environment routes ``scheme`` requests to ``host`` through a proxy."""
    return scheme in urllib.request.getproxies() and not urllib.request.proxy_bypass(host)
