"""Customer, tag and analytics request and response models."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import (
    AfterValidator,
    BaseModel,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    StringConstraints,
)

from service.http.schemas import NO_NUL_PATTERN, SPACE_CHARS, JsonObject, StrictInput, UtcDatetime

CustomerStatus = Literal["active", "inactive", "suspended"]
MAX_TAGS = 50
MAX_METRICS = 100
EMAIL_PART = rf"[^@{SPACE_CHARS}\x00]+"

# At least one visible character, no NUL (PostgreSQL cannot store it).
CustomerName = Annotated[
    StrictStr,
    StringConstraints(
        min_length=1, max_length=200, pattern=rf"^[^\x00]*[^{SPACE_CHARS}\x00][^\x00]*$"
    ),
]
Email = Annotated[
    StrictStr,
    StringConstraints(max_length=320, pattern=rf"^{EMAIL_PART}@{EMAIL_PART}\.{EMAIL_PART}$"),
]
TagKey = Annotated[
    StrictStr, StringConstraints(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$")
]
TagValue = (
    Annotated[StrictStr, StringConstraints(max_length=500, pattern=NO_NUL_PATTERN)]
    | StrictBool
    | StrictInt
    | Annotated[StrictFloat, Field(allow_inf_nan=False)]
    | None
)


def sized(limit: int, what: str) -> AfterValidator:
    """Validator and schema for a mapping of 1 to ``limit`` entries."""

    def check(value: dict[str, Any]) -> dict[str, Any]:
        if not 1 <= len(value) <= limit:
            raise ValueError(f"send between 1 and {limit} {what}")
        return value

    return AfterValidator(check)


class CustomerCreate(StrictInput):
    name: CustomerName
    email: Email | None = None
    status: CustomerStatus = "active"


class StatusChange(StrictInput):
    status: CustomerStatus


class TagsIn(StrictInput):
    tags: Annotated[
        dict[TagKey, TagValue],
        sized(MAX_TAGS, "tags"),
        Field(
            json_schema_extra={
                "additionalProperties": False,
                "minProperties": 1,
                "maxProperties": MAX_TAGS,
            }
        ),
    ]


class AnalyticsIn(StrictInput):
    metrics: Annotated[
        JsonObject,
        sized(MAX_METRICS, "metrics"),
        Field(json_schema_extra={"minProperties": 1, "maxProperties": MAX_METRICS}),
    ]
    recorded_at: UtcDatetime | None = None


class CustomerOut(BaseModel):
    customer_id: UUID
    name: str
    email: str | None
    status: CustomerStatus
    created_at: datetime
    updated_at: datetime


class CustomerDeleted(BaseModel):
    customer_id: UUID
    deleted_at: datetime


class CustomerErased(BaseModel):
    """What an erasure removed; ``event_id`` is the ``customer_erasure`` event (None on a
    repeated erasure, which changes nothing)."""

    customer_id: UUID
    erased_at: datetime
    already_erased: bool
    tags_removed: int
    analytics_removed: int
    idempotency_keys_removed: int
    events_redacted: int
    dead_letters_redacted: int = Field(
        description="Dead letters of the customer in the tenant's DLQ replaced by redacted "
        "copies (on a repeated erasure too: the DLQ is swept every time)"
    )
    event_id: UUID | None


class TagsOut(BaseModel):
    customer_id: UUID
    tags: dict[str, Any]


class AnalyticsOut(BaseModel):
    analytics_id: UUID
    customer_id: UUID
    metrics: dict[str, Any]
    recorded_at: datetime
    created_at: datetime
