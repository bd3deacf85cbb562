"""The response envelope of SPEC 4.1: ``{"data": ..., "detail": {...}}`` on every answer."""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import cache
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
    return {"data": encoded(data), "detail": detail(status_code, description)}


def detail(status_code: int, description: str = SUCCESS) -> dict[str, str]:
    return {
        "status_code": str(status_code),
        "status_name": reason_phrase(status_code),
        "status_description": description,
    }


def encoded(data: Any) -> Any:
    """``data`` as JSON-ready values; a model dumps itself."""
    if data is None:
        return {}
    if isinstance(data, BaseModel):
        return data.model_dump(mode="json")
    return jsonable_encoder(data)


class EnvelopeResponse(JSONResponse):
    """A JSONResponse whose content is already the encoded envelope (bytes)."""

    def render(self, content: Any) -> bytes:
        assert isinstance(content, bytes)
        return content


@cache
def success_tail(status_code: int) -> bytes:
    """``,"detail":{...}}`` of a 2xx, encoded as JSONResponse would encode it."""
    return b',"detail":' + compact_json(detail(status_code)) + b"}"


def compact_json(value: Any) -> bytes:
    """JSONResponse's encoding: UTF-8, compact separators, NaN refused."""
    return json.dumps(
        value, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")
    ).encode("utf-8")


def success(
    data: Any, status_code: int = 200, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """A 2xx answer wrapping ``data``.

    A model (the usual case) is encoded by pydantic-core straight to JSON bytes, spliced
    into the envelope with the status detail encoded once per code: the same bytes as
    ``JSONResponse(envelope_body(...))`` without the intermediate dict and ``json.dumps``.
    """
    if isinstance(data, BaseModel):
        payload = data.__pydantic_serializer__.to_json(data)
    else:
        payload = compact_json(encoded(data))
    body = b'{"data":' + payload + success_tail(status_code)
    return EnvelopeResponse(body, status_code=status_code, headers=headers)


def error(
    status_code: int, description: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """An error answer: empty data and a specific, actionable description."""
    return JSONResponse(
        envelope_body({}, status_code, description), status_code=status_code, headers=headers
    )
