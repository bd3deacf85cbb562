"""Pure ASGI middlewares: request id, body size limit, metrics timing and the audit trail.

Request state lives in ``scope["state"]`` (what ``request.state`` reads), so handlers,
dependencies and these middlewares share it: ``request_id``, ``actor``, ``consumer_id``,
``admin_action`` / ``audited`` (write an audit row) and ``audit_detail``.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.audit import AuditEntry, write_audit
from service.envelope import error
from service.metrics import HttpMetrics, route_template

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "x-request-id"
SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def state_of(scope: Scope) -> dict[str, Any]:
    """The per-request state dict (the one behind ``request.state``)."""
    state: dict[str, Any] = scope.setdefault("state", {})
    return state


def accepted_request_id(raw: str | None) -> str:
    """The client's ``X-Request-ID`` when it is sane, else a fresh one."""
    if raw and SANE_REQUEST_ID.match(raw):
        return raw
    return uuid.uuid4().hex


class RequestIdMiddleware:
    """Accepts or generates the request id, stores it in the state and echoes it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = accepted_request_id(Headers(scope=scope).get(REQUEST_ID_HEADER))
        state_of(scope)["request_id"] = request_id
        header = (REQUEST_ID_HEADER.encode(), request_id.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = message.get("headers", [])
                if all(name.lower() != header[0] for name, _ in headers):
                    message["headers"] = [*headers, header]
            await send(message)

        await self.app(scope, receive, send_with_id)


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` when a streamed body passes the limit."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, too_large_description(limit))


def too_large_description(limit: int) -> str:
    return f"Request body exceeds {limit} bytes; send less (limit FINTEGRATE_MAX_BODY_BYTES)"


class BodySizeLimitMiddleware:
    """413 for bodies over ``max_body_bytes``: by Content-Length, or while streaming."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.limit = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and not declared.isdigit():
            await error(400, "Content-Length must be a non-negative integer")(scope, receive, send)
            return
        if declared is not None and int(declared) > self.limit:
            await self._refuse(scope, receive, send)
            return
        await self._stream(scope, receive, send)

    async def _stream(self, scope: Scope, receive: Receive, send: Send) -> None:
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if started:
                raise
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error(413, too_large_description(self.limit), {"Connection": "close"})
        await response(scope, receive, send)


class MetricsMiddleware:
    """Times every request and counts it by route template and status."""

    def __init__(self, app: ASGIApp, metrics: HttpMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            self.metrics.observe(scope, status, time.perf_counter() - started)


class AuditMiddleware:
    """After the answer: an audit row for every 5xx and every admin action of a verified caller.

    An unauthenticated request (no credential, or one that failed verification) writes no
    row, whatever it caused: it is logged, and auth refusals are counted in Prometheus.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        except Exception as exc:
            state_of(scope).setdefault("audit_detail", {"error": type(exc).__name__})
            await self._audit(scope, 500)
            raise
        await self._audit(scope, status)

    async def _audit(self, scope: Scope, status: int) -> None:
        state = state_of(scope)
        if status < 500 and not (state.get("admin_action") or state.get("audited")):
            return
        if "actor" not in state:  # strangers write nothing (service.auth.refusals counts them)
            logger.info(
                "no audit row for an unauthenticated request: %s", audit_entry(scope, status)
            )
            return
        entry = audit_entry(scope, status)
        if state.get("database_unavailable"):
            logger.error("audit row not written (database unavailable): %s", entry)
            return
        await run_in_threadpool(write_audit, _engine(scope), entry)


def audit_entry(scope: Scope, status: int) -> AuditEntry:
    """The audit row describing this request and its outcome."""
    state = state_of(scope)
    method = scope.get("method", "")
    if status >= 500:
        action = "server_error"
    else:
        action = "admin_action" if state.get("admin_action") else "tenant_action"
    return AuditEntry(
        actor=state.get("actor", "anonymous"),
        action=f"{action}: {method} {route_template(scope)}",
        request_id=state.get("request_id"),
        consumer_id=state.get("consumer_id"),
        method=method,
        path=scope.get("path"),
        status_code=status,
        detail=state.get("audit_detail", {}),
    )


def _engine(scope: Scope) -> Any:
    app = scope.get("app")
    return getattr(getattr(app, "state", None), "engine", None)
