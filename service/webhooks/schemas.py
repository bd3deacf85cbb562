"""Webhook endpoint and attempt models (SPEC 8)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator
from pydantic.json_schema import SkipJsonSchema

from service.http.schemas import StrictInput, Text, UtcDatetime
from service.messaging.topology import EventType

EndpointStatus = Literal["enabled", "disabled"]
AttemptStatus = Literal["succeeded", "retrying", "failed"]
EndpointUrl = Annotated[Text, StringConstraints(min_length=8, max_length=2048)]
Description = Annotated[Text, StringConstraints(max_length=500)]
EventTypes = Annotated[list[EventType], Field(min_length=1, max_length=16)]


class EndpointCreate(StrictInput):
    """``event_types`` omitted or null: every event type."""

    url: EndpointUrl = Field(examples=["https://hooks.example.com/fintegrate"])
    event_types: EventTypes | None = None
    description: Description | None = None


class EndpointUpdate(StrictInput):
    """Fields to change; at least one. ``event_types: null`` means every type again."""

    model_config = ConfigDict(json_schema_extra={"minProperties": 1})

    url: EndpointUrl | SkipJsonSchema[None] = None
    event_types: EventTypes | None = None
    description: Description | None = None
    status: EndpointStatus | SkipJsonSchema[None] = None

    @model_validator(mode="after")
    def _something_to_change(self) -> EndpointUpdate:
        if not self.model_fields_set:
            raise ValueError("send at least one of url, event_types, description, status")
        for name in ("url", "status"):
            if name in self.model_fields_set and getattr(self, name) is None:
                raise ValueError(f"{name} cannot be null")
        return self


class RecoverRequest(StrictInput):
    """The window of events to send again: created at or after ``since``, before ``until``
    (an ``until`` not after ``since`` is an empty window: nothing is queued)."""

    since: UtcDatetime
    until: UtcDatetime | None = None


class EndpointOut(BaseModel):
    endpoint_id: UUID
    url: str
    event_types: list[str] | None
    description: str | None
    status: EndpointStatus
    disabled_reason: str | None
    created_at: datetime
    updated_at: datetime


class EndpointWithSecret(EndpointOut):
    """Shown once: at creation and at rotation."""

    secret: str = Field(description="whsec_… (shown once; sign-check deliveries with it)")


class SecretRotated(BaseModel):
    endpoint_id: UUID
    secret: str = Field(description="The new whsec_… secret (shown once)")
    previous_secret_expires_at: datetime | None = Field(
        description="Until then the previous secret signs too (both signatures are sent)"
    )


class EndpointDeleted(BaseModel):
    endpoint_id: UUID
    deleted: bool
    cancelled_deliveries: int


class AttemptOut(BaseModel):
    attempt_id: UUID
    event_id: UUID
    attempt_number: int
    status: AttemptStatus
    started_at: datetime
    duration_ms: int
    response_status: int | None
    response_body: str | None
    error: str | None
    next_attempt_at: datetime | None


class RecoverOutcome(BaseModel):
    endpoint_id: UUID
    since: datetime
    until: datetime | None
    queued: int = Field(description="Events of the window queued again, sent in sequence order")
