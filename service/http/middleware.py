"""The edge middleware (pure ASGI): request id, audit trail, metrics timing, body size limit.

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
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.http.audit import AuditEntry, write_audit
from service.http.envelope import error
from service.http.metrics import HttpMetrics
from service.kit.request import RESPONSE_STATUS, route_template, state_of
from service.ratelimit.middleware import with_rate_limit_headers

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "x-request-id"
REQUEST_ID_BYTES = REQUEST_ID_HEADER.encode()
SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def accepted_request_id(raw: str | None) -> str:
    """The client's ``X-Request-ID`` when it is sane, else a fresh one."""
    if raw and SANE_REQUEST_ID.match(raw):
        return raw
    return uuid.uuid4().hex


def request_headers(scope: Scope) -> tuple[str | None, str | None]:
    """The request's first ``Content-Length`` and ``X-Request-ID`` values (one pass)."""
    declared = request_id = None
    for name, value in scope["headers"]:
        if name == b"content-length" and declared is None:
            declared = value.decode("latin-1")
        elif name == REQUEST_ID_BYTES and request_id is None:
            request_id = value.decode("latin-1")
    return declared, request_id


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` when a streamed body passes the limit."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, too_large_description(limit))


def too_large_description(limit: int) -> str:
    return f"Request body exceeds {limit} bytes; send less (limit FINTEGRATE_MAX_BODY_BYTES)"


class EdgeMiddleware:
    """The request's edge as one pure ASGI layer, one ``send`` wrapper for all of it.

    Outermost first (what five layers did, in the same order, with the same answers):
    1. request id: the client's sane ``X-Request-ID`` or a fresh one, in the state and
       echoed on the answer, with the X-RateLimit-* headers of the request's token
       (``service.ratelimit.middleware``; none before a route took one);
    2. audit: after the answer, a row for every 5xx and every admin action;
    3. metrics: every request timed and counted by route template and status (the audit
       write is outside the timing);
    4. body limit: 400 for a malformed Content-Length, 413 above ``max_body_bytes`` by
       Content-Length or while the body streams in.
    """

    def __init__(self, app: ASGIApp, metrics: HttpMetrics, max_body_bytes: int) -> None:
        self.app = app
        self.metrics = metrics
        self.limit = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared, raw_id = request_headers(scope)
        state = state_of(scope)
        state["request_id"] = request_id = accepted_request_id(raw_id)
        id_header = (REQUEST_ID_BYTES, request_id.encode())
        response = {"status": 500, "started": False}

        async def edge_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                response["status"], response["started"] = message["status"], True
                state[RESPONSE_STATUS] = message["status"]  # for the request span, if traced
                headers = with_rate_limit_headers(list(message.get("headers", [])), state)
                if all(name.lower() != REQUEST_ID_BYTES for name, _ in headers):
                    headers.append(id_header)
                message["headers"] = headers
            await send(message)

        began = time.perf_counter()
        try:
            try:
                await self._limited(scope, receive, edge_send, declared, response)
            finally:
                self.metrics.observe(scope, response["status"], time.perf_counter() - began)
        except Exception as exc:
            state.setdefault("audit_detail", {"error": type(exc).__name__})
            await audit(scope, 500)
            raise
        await audit(scope, response["status"])

    async def _limited(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        declared: str | None,
        response: dict[str, Any],
    ) -> None:
        """The app behind the body limit."""
        if declared is not None and not declared.isdigit():
            await error(400, "Content-Length must be a non-negative integer")(scope, receive, send)
            return
        if declared is not None and int(declared) > self.limit:
            await self._refuse(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        try:
            await self.app(scope, limited_receive, send)
        except BodyTooLarge:
            if response["started"]:
                raise
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error(413, too_large_description(self.limit), {"Connection": "close"})
        await response(scope, receive, send)


async def audit(scope: Scope, status: int) -> None:
    """An audit row for a 5xx or an admin action of a verified caller.

    An unauthenticated request (no credential, or one that failed verification) writes no
    row, whatever it caused: it is logged, and auth refusals are counted in Prometheus.
    Logged instead when the database is gone.
    """
    state = state_of(scope)
    if status < 500 and not (state.get("admin_action") or state.get("audited")):
        return
    if "actor" not in state:  # strangers write nothing (service.auth.refusals counts them)
        if logger.isEnabledFor(logging.INFO):  # the entry is built only to be logged
            entry = audit_entry(scope, status)
            logger.info("no audit row for an unauthenticated request: %s", entry)
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
