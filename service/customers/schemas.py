"""Customer, tag and analytics request and response models."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import AfterValidator, BaseModel, Field, StringConstraints

from service.schemas import JsonObject, StrictInput, Text, UtcDatetime

CustomerStatus = Literal["active", "inactive", "suspended"]
MAX_TAGS = 50
MAX_METRICS = 100

CustomerName = Annotated[
    Text, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)
]
Email = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True, max_length=320, pattern=r"^[^@\s\x00]+@[^@\s\x00]+\.[^@\s\x00]+$"
    ),
]
TagKey = Annotated[
    str, StringConstraints(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$")
]
TagValue = (
    Annotated[Text, StringConstraints(max_length=500)]
    | bool
    | int
    | Annotated[float, Field(allow_inf_nan=False)]
    | None
)


def at_most(limit: int, what: str) -> AfterValidator:
    """A validator refusing mappings with more than ``limit`` entries."""

    def check(value: dict[str, Any]) -> dict[str, Any]:
        if len(value) > limit:
            raise ValueError(f"at most {limit} {what} are allowed")
        return value

    return AfterValidator(check)


class CustomerCreate(StrictInput):
    name: CustomerName
    email: Email | None = None
    status: CustomerStatus = "active"


class StatusChange(StrictInput):
    status: CustomerStatus


class TagsIn(StrictInput):
    tags: Annotated[dict[TagKey, TagValue], Field(min_length=1), at_most(MAX_TAGS, "tags")]


class AnalyticsIn(StrictInput):
    metrics: Annotated[JsonObject, Field(min_length=1), at_most(MAX_METRICS, "metrics")]
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


class TagsOut(BaseModel):
    customer_id: UUID
    tags: dict[str, Any]


class AnalyticsOut(BaseModel):
    analytics_id: UUID
    customer_id: UUID
    metrics: dict[str, Any]
    recorded_at: datetime
    created_at: datetime
