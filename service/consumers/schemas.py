"""Consumer (tenant) and API key request and response models."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictStr,
    StringConstraints,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema

from service.http.schemas import StrictInput, Text, json_integer

ConsumerStatus = Literal["active", "disabled"]
ConsumerName = Annotated[
    StrictStr, StringConstraints(min_length=1, max_length=64, pattern=r"^[a-z0-9_]+$")
]
Description = Annotated[Text, StringConstraints(max_length=500)]
RateLimitValue = Annotated[int, Field(ge=1, le=1_000_000), BeforeValidator(json_integer)]


class ConsumerCreate(StrictInput):
    name: ConsumerName = Field(description="Lowercase letters, digits and underscores")
    description: Description | None = None
    rate_limit_per_minute: RateLimitValue | None = None
    rate_limit_burst: RateLimitValue | None = None


class ConsumerUpdate(StrictInput):
    """Fields to change; at least one. Sending ``null`` for a limit restores the default."""

    model_config = ConfigDict(json_schema_extra={"minProperties": 1})

    status: ConsumerStatus | SkipJsonSchema[None] = None  # optional, but never null
    description: Description | None = None
    rate_limit_per_minute: RateLimitValue | None = None
    rate_limit_burst: RateLimitValue | None = None

    @model_validator(mode="after")
    def _something_to_change(self) -> ConsumerUpdate:
        if not self.model_fields_set:
            raise ValueError("send at least one of status, description, rate_limit_*")
        if "status" in self.model_fields_set and self.status is None:
            raise ValueError("status must be active or disabled")
        return self


class ConsumerOut(BaseModel):
    consumer_id: UUID
    name: str
    description: str | None
    status: ConsumerStatus
    rate_limit_per_minute: int | None
    rate_limit_burst: int | None
    queue_name: str
    dlq_name: str
    created_at: datetime
    updated_at: datetime


class KeyOut(BaseModel):
    """An API key's metadata; never the hash."""

    key_id: UUID
    consumer_id: UUID
    key_prefix: str
    is_active: bool
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None
    expires_at: datetime | None


class KeyIssued(KeyOut):
    """A new key: ``api_key`` is shown this once and never again."""

    api_key: str


class BrokerCredentialsOut(BaseModel):
    """The tenant's own RabbitMQ login (read-only on its queue and DLQ); shown once."""

    username: str
    password: str
    vhost: str


class ConsumerCreated(ConsumerOut):
    """A new consumer with its first key and broker login (both shown once) and the queue
    provisioning outcome. ``broker`` is null (``broker_provisioned`` false) when the
    management API was unavailable: rotate the broker credentials to create the user."""

    api_key: str
    key_id: UUID
    key_prefix: str
    queue_provisioned: bool = False
    broker: BrokerCredentialsOut | None = None
    broker_provisioned: bool = False


class ConsumerMe(BaseModel):
    """The consumer an API key belongs to, as the worker checks it."""

    consumer_id: UUID
    name: str
    status: ConsumerStatus
    queue_name: str
    dlq_name: str
    broker_username: str
