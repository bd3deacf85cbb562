"""Envelope models for OpenAPI, shared field types and input guards."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Generic, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    StringConstraints,
)
from typing_extensions import TypeAliasType

from service.http.envelope import reason_phrase

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


@dataclass(frozen=True)
class ClosedObject:
    """JSON-schema marker: the object allows no property beyond its ``patternProperties``."""

    def __get_pydantic_json_schema__(
        self, core_schema: Any, handler: GetJsonSchemaHandler
    ) -> dict[str, Any]:
        schema: dict[str, Any] = handler(core_schema)
        schema["additionalProperties"] = False
        return schema


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
# Whitespace spelled out as the union of ECMA-262 \s (what JSON Schema clients read) and
# Unicode \s (what pydantic enforces), so a published pattern and validation agree exactly.
SPACE_CHARS = r"\t\n\x0b\x0c\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
Text = Annotated[StrictStr, StringConstraints(pattern=NO_NUL_PATTERN)]
UtcDatetime = Annotated[datetime, BeforeValidator(text_only), AfterValidator(as_utc)]
# Free-form JSON that PostgreSQL can store, described exactly in the OpenAPI schema: no NUL
# in any string or key, finite numbers only, nothing coerced (pydantic refuses nesting past
# its recursion guard, about 250 levels, with a 422).
StorableText = Annotated[StrictStr, StringConstraints(pattern=NO_NUL_PATTERN)]
FiniteNumber = Annotated[StrictFloat, Field(allow_inf_nan=False)]
StorableJson = TypeAliasType(
    "StorableJson",
    "StorableText | StrictBool | StrictInt | FiniteNumber | list[StorableJson]"
    " | Annotated[dict[StorableText, StorableJson], ClosedObject()] | None",
)
JsonObject = Annotated[dict[StorableText, StorableJson], ClosedObject()]


def json_integer(value: Any) -> Any:
    """Refuse what JSON Schema's ``integer`` refuses before pydantic could coerce it: booleans
    and strings (``true`` and ``"5"`` are not integers). ``5.0`` is one (JSON has no other
    spelling rule) and passes on to ``int``, which still refuses ``5.5``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("expected a JSON integer (not a boolean or a string)")
    return value


# A JSON integer: ``5`` and ``5.0`` are accepted, ``true``, ``"5"`` and ``5.5`` are not.
JsonInt = Annotated[int, BeforeValidator(json_integer)]


class StrictInput(BaseModel):
    """Base of request bodies: unknown fields are refused.

    Fields use the strict types (``JsonInt``, ``StrictBool``, ``StrictStr``): JSON ``true``
    is not a number and ``"5"`` is not an integer. tests/service/test_strict_bodies.py checks that
    every request model keeps to it.
    """

    model_config = ConfigDict(extra="forbid")
