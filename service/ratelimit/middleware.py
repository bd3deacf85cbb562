"""The HTTP side of rate limiting: X-RateLimit-* headers on every response."""

from __future__ import annotations

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.kit.request import state_of
from service.ratelimit.limiter import STATE_HEADERS


class RateLimitHeadersMiddleware:
    """Pure ASGI: copies the request's X-RateLimit-* headers onto whatever response leaves."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = state_of(scope)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start" and state.get(STATE_HEADERS):
                message["headers"] = _merge_headers(
                    message.get("headers", []), state[STATE_HEADERS]
                )
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _merge_headers(
    raw: list[tuple[bytes, bytes]], extra: dict[str, str]
) -> list[tuple[bytes, bytes]]:
    present = {name.lower() for name, _ in raw}
    added = [
        (name.lower().encode("latin-1"), value.encode("latin-1"))
        for name, value in extra.items()
        if name.lower().encode("latin-1") not in present
    ]
    return [*raw, *added]


def install_rate_limit_headers(app: FastAPI) -> None:
    """Add the middleware that puts rate-limit headers on every response."""
    app.add_middleware(RateLimitHeadersMiddleware)
