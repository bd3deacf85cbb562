"""Routes answered by a hand-written handler first, by FastAPI's own handler when it declines.

FastAPI's request handler solves dependencies, extracts and validates every declared
parameter and runs telemetry hooks on every request, whatever the route needs: on a hot
route, work per request that the usual request does not need (docs/benchmarks.md). A
route of a router built with ``route_class=DirectRoute`` whose endpoint is marked with
``answered_by(handler)`` sends each request to ``handler`` first. The handler answers the
usual request itself and returns None for anything else *before it has done anything*
(taken no token, written nothing): FastAPI's handler then answers that request exactly as
it always did, from the same ``Request`` (its body is read once and kept). The route's
OpenAPI description still comes from the endpoint's signature.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from fastapi import Request, Response
from fastapi.routing import APIRoute
from fastapi.telemetry import get_telemetry_data
from pydantic import BaseModel, ValidationError

DirectHandler = Callable[[Request], Awaitable[Response | None]]
Endpoint = TypeVar("Endpoint", bound=Callable[..., Any])
Model = TypeVar("Model", bound=BaseModel)
DIRECT_HANDLER = "direct_handler"
JSON_MEDIA_TYPE = "application/json"


def answered_by(handler: DirectHandler) -> Callable[[Endpoint], Endpoint]:
    """Mark an endpoint whose requests ``handler`` answers first (see the module)."""

    def mark(endpoint: Endpoint) -> Endpoint:
        setattr(endpoint, DIRECT_HANDLER, handler)
        return endpoint

    return mark


class DirectRoute(APIRoute):
    """An ``APIRoute`` that hands requests to its endpoint's ``answered_by`` handler first.

    Unmarked endpoints get FastAPI's handler unchanged. With FastAPI's native telemetry on
    (``FINTEGRATE_OPENTELEMETRY``), every request goes to FastAPI's handler, which
    reports its operations.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        standard = super().get_route_handler()
        direct: DirectHandler | None = getattr(self.endpoint, DIRECT_HANDLER, None)
        if direct is None:
            return standard

        async def answer(request: Request) -> Response:
            if get_telemetry_data() is None:
                response = await direct(request)
                if response is not None:
                    return response
            return await standard(request)

        return answer


async def json_body(request: Request, model: type[Model]) -> Model | None:
    """The body as ``model`` when FastAPI would accept it the same way, else None.

    FastAPI reads a JSON body with ``json.loads`` and validates the value; pydantic's own
    JSON parser, used here, refuses whatever ``json.loads`` refuses and reads the rest the
    same (a repeated key: the last one), and refuses some bodies ``json.loads`` reads (a
    byte order mark, UTF-16): None then, and FastAPI answers. None too for another content
    type or an invalid value.
    """
    content_type = request.headers.get("content-type")
    if content_type is None or content_type.partition(";")[0].strip().lower() != JSON_MEDIA_TYPE:
        return None
    body = await request.body()  # a body over the limit raises here, as in FastAPI
    try:
        return model.model_validate_json(body)
    except ValidationError:
        return None
