"""The API's request span (pure ASGI), installed only when tracing is on (``kit.tracing``).

It continues an incoming W3C ``traceparent`` and leaves the span's own ``traceparent`` in
the request state, where the event origin picks it up: events store the context of the
request that wrote them.

One span per request and nothing else on the hot path: the span is started directly (not
through the SDK's context-manager layers), the attributes known up front go in at the
start, and the route and status go in once, as one ``set_attributes``, after the answer,
only when the sampler chose to record it (an unsampled request gets a non-recording span
and pays for nothing more). The status is the one the edge middleware (inside this one)
noted in the state as it sent it: no ``send`` wrapper of our own. Measured in
docs/observability.md.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from service.kit import tracing
from service.kit.request import RESPONSE_STATUS, route_template, state_of

TRACEPARENT_BYTES = tracing.TRACEPARENT.encode()
ERROR_STATUS = 500  # answers from here on mark the span as an error (HTTP semconv, server)


class TracingMiddleware:
    """One SERVER span per HTTP request, named ``METHOD /route/{template}``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        parent = incoming_traceparent(scope)
        state = state_of(scope)
        span, state["traceparent"] = tracing.start_request_span(method, scope["path"], parent)
        token = tracing.make_current(span)
        try:
            await self.app(scope, receive, send)
        except BaseException as error:
            if span.is_recording():
                tracing.record_error(span, error)
            raise
        else:
            if state.get(RESPONSE_STATUS, ERROR_STATUS) >= ERROR_STATUS and span.is_recording():
                tracing.mark_error(span)
        finally:
            tracing.detach(token)
            if span.is_recording():
                status = state.get(RESPONSE_STATUS, ERROR_STATUS)
                route = route_template(scope)
                span.update_name(f"{method} {route}")
                span.set_attributes({"http.route": route, "http.response.status_code": status})
            span.end()


def incoming_traceparent(scope: Scope) -> str | None:
    """The request's ``traceparent`` header, if any (the SDK ignores a malformed one)."""
    for name, value in scope["headers"]:
        if name == TRACEPARENT_BYTES:
            return str(value.decode("latin-1"))
    return None
