"""Event read models, filters and the origin recorded on every event row."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from service.messaging.topology import EventType

MAX_LOOKUP_CUSTOMERS = 100

PublishStatus = Literal["pending", "published", "failed"]
DeliverStatus = Literal["pending", "delivered", "failed"]


@dataclass(frozen=True)
class EventOrigin:
    """Where a change came from: ``source_service`` and the request id for ``metadata_json``."""

    source_service: str
    request_id: str | None = None
    traceparent: str | None = None  # the request span's, when tracing is on


@dataclass(frozen=True)
class EventFilters:
    """Optional filters of ``GET /events``."""

    customer_id: UUID | None = None
    event_type: str | None = None
    publish_status: str | None = None
    deliver_status: str | None = None
    since: datetime | None = None


class EventOut(BaseModel):
    """One event with its publish and delivery bookkeeping."""

    event_id: UUID
    customer_id: UUID | None
    consumer_id: UUID
    event_type: EventType
    source_service: str
    payload: dict[str, Any]
    metadata: dict[str, Any]
    publish_status: PublishStatus
    publish_try_count: int
    publish_failure_reason: str | None
    published_at: datetime | None
    deliver_status: DeliverStatus
    deliver_try_count: int
    delivered_at: datetime | None
    created_at: datetime
    sequence: int = Field(
        description="Position in its aggregate (the customer, or the consumer for "
        "consumer-level events): 1, 2, 3, … in commit order, no gaps"
    )


class LastDelivered(BaseModel):
    """The last event of one aggregate whose delivery a receipt confirmed."""

    aggregate_id: UUID = Field(
        description="The customer asked for, or the tenant's consumer_id for consumer-level events"
    )
    sequence: int = Field(
        description="Highest sequence of the aggregate with deliver_status 'delivered'; 0 "
        "when none (also for a customer that is unknown or another tenant's)"
    )
    event_id: UUID | None = Field(description="That event, or null when sequence is 0")


class LastDeliveredQuery(BaseModel):
    """Several aggregates at once: customers, and optionally the consumer-level one."""

    model_config = ConfigDict(extra="forbid")

    customer_ids: list[UUID] = Field(default_factory=list, max_length=MAX_LOOKUP_CUSTOMERS)
    include_consumer: bool = Field(
        default=False,
        strict=True,
        description="Also answer for the tenant's consumer-level aggregate",
    )


class LastDeliveredList(BaseModel):
    """One answer per aggregate asked, customers in the order asked, the consumer last."""

    items: list[LastDelivered]
