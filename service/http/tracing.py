"""The API's request span (pure ASGI), installed only when tracing is on (``kit.tracing``).

It continues an incoming W3C ``traceparent`` and leaves the span's own ``traceparent`` in
the request state, where the event origin picks it up: events store the context of the
request that wrote them.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.http.metrics import route_template
from service.http.middleware import state_of
from service.kit import tracing

TRACEPARENT_BYTES = tracing.TRACEPARENT.encode()


class TracingMiddleware:
    """One SERVER span per HTTP request, named ``METHOD /route/{template}``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = scope.get("method", "")
        status = {"code": 500}

        async def traced_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        attributes = {"http.request.method": method, "url.path": scope.get("path", "")}
        with tracing.span(method, "server", attributes, incoming_traceparent(scope)) as span:
            state_of(scope)["traceparent"] = tracing.current_traceparent()
            try:
                await self.app(scope, receive, traced_send)
            finally:
                route = route_template(scope)
                span.update_name(f"{method} {route}")
                span.set_attribute("http.route", route)
                span.set_attribute("http.response.status_code", status["code"])
                if status["code"] >= 500:
                    from opentelemetry.trace import StatusCode

                    span.set_status(StatusCode.ERROR)


def incoming_traceparent(scope: Scope) -> str | None:
    """The request's ``traceparent`` header, if any (the SDK ignores a malformed one)."""
    for name, value in scope["headers"]:
        if name == TRACEPARENT_BYTES:
            return str(value.decode("latin-1"))
    return None
