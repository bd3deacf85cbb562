"""Envelope models for OpenAPI, shared field types and input guards."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import Annotated, Any, Generic, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
)

from service.envelope import reason_phrase

T = TypeVar("T")
DATE_PREFIX = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]")


class StatusDetail(BaseModel):
    """The ``detail`` block of every answer."""

    status_code: str = Field(examples=["200"])
    status_name: str = Field(examples=["OK"])
    status_description: str = Field(examples=["Success"])


class Envelope(BaseModel, Generic[T]):
    """A successful answer: ``data`` holds the result."""

    data: T
    detail: StatusDetail


class EmptyData(BaseModel):
    """The empty ``data`` object of an error answer."""

    model_config = ConfigDict(extra="forbid")


class ErrorEnvelope(BaseModel):
    """An error answer: empty ``data`` and a specific description."""

    data: EmptyData
    detail: StatusDetail


class ListPage(BaseModel, Generic[T]):
    """One page of a listing; pass ``next_cursor`` back as ``cursor`` for the next one."""

    items: list[T]
    next_cursor: str | None
    count: int


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries documenting ``codes`` as error envelopes."""
    return {code: {"model": ErrorEnvelope, "description": reason_phrase(code)} for code in codes}


def reject_unstorable(value: Any) -> Any:
    """Refuse what PostgreSQL cannot store: NUL characters and non-finite numbers."""
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError("text must not contain NUL (\\u0000) characters")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("numbers must be finite (no NaN or Infinity)")
    elif isinstance(value, dict):
        for key, item in value.items():
            reject_unstorable(key)
            reject_unstorable(item)
    elif isinstance(value, list):
        for item in value:
            reject_unstorable(item)
    return value


def text_only(value: Any) -> Any:
    """Refuse anything but an RFC 3339 string (pydantic would read numbers as epoch seconds)."""
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str) or not DATE_PREFIX.match(value):
        raise ValueError("expected an RFC 3339 date-time such as 2026-01-31T12:00:00Z")
    return value


def as_utc(value: datetime) -> datetime:
    """A timezone-aware UTC datetime; naive input is taken as UTC."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError as exc:
        raise ValueError("datetime is out of range") from exc


NO_NUL_PATTERN = r"^[^\x00]*$"
Text = Annotated[str, StringConstraints(pattern=NO_NUL_PATTERN)]
UtcDatetime = Annotated[datetime, BeforeValidator(text_only), AfterValidator(as_utc)]
JsonObject = Annotated[dict[str, Any], AfterValidator(reject_unstorable)]


class StrictInput(BaseModel):
    """Base of request bodies: unknown fields are refused."""

    model_config = ConfigDict(extra="forbid")
