"""The response envelope of SPEC 4.1: ``{"data": ..., "detail": {...}}`` on every answer."""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from pydantic import BaseModel

SUCCESS = "Success"


def reason_phrase(status_code: int) -> str:
    """The standard reason phrase of an HTTP status code."""
    try:
        return HTTPStatus(status_code).phrase
    except ValueError:
        return "Unknown"


def envelope_body(data: Any, status_code: int, description: str = SUCCESS) -> dict[str, Any]:
    """The envelope as a plain dict."""
    return {
        "data": encoded(data),
        "detail": {
            "status_code": str(status_code),
            "status_name": reason_phrase(status_code),
            "status_description": description,
        },
    }


def encoded(data: Any) -> Any:
    """``data`` as JSON-ready values; a model dumps itself (the fast path of a 2xx)."""
    if data is None:
        return {}
    if isinstance(data, BaseModel):
        return data.model_dump(mode="json")
    return jsonable_encoder(data)


def success(
    data: Any, status_code: int = 200, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """A 2xx answer wrapping ``data``."""
    return JSONResponse(envelope_body(data, status_code), status_code=status_code, headers=headers)


def error(
    status_code: int, description: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """An error answer: empty data and a specific, actionable description."""
    return JSONResponse(
        envelope_body({}, status_code, description), status_code=status_code, headers=headers
    )
