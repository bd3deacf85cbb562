"""Request and answer models of resend / redeliver / confirm-delivery / confirm-deliveries."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

from pydantic import BaseModel, BeforeValidator, Field, StrictBool, StrictStr

from service.events.schemas import EventType
from service.http.schemas import JsonInt, StrictInput, Text, json_integer
from service.messaging.topology import CONSUMER_NAME_MAX_LENGTH

DEFAULT_PERIOD_DAYS = 7
DEFAULT_CHUNK = 1000
MAX_CHUNK = 5000
MAX_DRY_RUN_IDS = 1000
MAX_RECEIPTS_PER_CALL = 100

# constraints before the validator, so the OpenAPI schema keeps minimum/maximum in the union
TryCount = Annotated[int, Field(ge=1, le=1000), BeforeValidator(json_integer)]
ReceiptStatus = Literal["received", "processed", "failed"]


class RepublishRequest(StrictInput):
    """Which events to republish. Tenants act on their own events; admins on all or one."""

    period_in_days: JsonInt = Field(
        DEFAULT_PERIOD_DAYS, ge=1, le=3650, description="Only events created this recently"
    )
    max_try_count: TryCount | None = Field(
        None,
        description="Only events tried fewer than this many times (publish_try_count); "
        "default: no limit, so the events the relay already retried many times (the stuck "
        "ones) are selected",
    )
    event_types: list[EventType] = Field(
        default_factory=list, max_length=4, description="Only these types (empty: all)"
    )
    dry_run: StrictBool = Field(False, description="Count and list matches; change nothing")
    consumer_name: StrictStr | None = Field(
        None,
        pattern=r"^[a-z0-9_]+$",
        max_length=CONSUMER_NAME_MAX_LENGTH,
        description="Admin only: restrict to one consumer",
    )
    limit: JsonInt = Field(
        DEFAULT_CHUNK,
        ge=1,
        le=MAX_CHUNK,
        description="Republish at most this many per call (a tenant at most "
        "FINTEGRATE_REPUBLISH_TENANT_MAX_PER_CALL)",
    )
    cursor: StrictStr | None = Field(
        None, max_length=512, description="next_cursor of the previous call, to continue"
    )


@dataclass(frozen=True)
class Selection:
    """The resolved filters of a republish request."""

    period_in_days: int
    max_try_count: int | None
    event_types: tuple[str, ...]
    consumer_id: UUID | None


class RepublishGroup(BaseModel):
    """Matching events of one consumer and event type."""

    consumer_name: str | None
    event_type: str
    count: int


class RepublishOutcome(BaseModel):
    """Counts of a resend / redeliver call.

    On ``dry_run`` ``matched`` counts every matching event (also per consumer and type in
    ``groups``) and ``event_ids`` lists the first ones. Otherwise ``matched`` is the events
    this call acted on (at most ``limit``), in aggregate order; ``held_back`` the ones it
    did not send because an earlier event of their customer is still pending (outside the
    selection, or failed just now): they keep their order and the relay sends them. Pass
    ``next_cursor`` back to continue.
    """

    dry_run: bool
    matched: int
    republished: int
    failed: int
    held_back: int = 0
    event_ids: list[UUID] | None = None
    groups: list[RepublishGroup] = Field(default_factory=list)
    next_cursor: str | None = None


class ConfirmDeliveryRequest(StrictInput):
    """A tenant's delivery receipt for one event."""

    event_id: UUID
    status: ReceiptStatus
    detail: Text | None = Field(None, max_length=2000)


class ConfirmDeliveriesRequest(StrictInput):
    """Several receipts in one call, each recorded as a single one; answered in the order sent."""

    receipts: list[ConfirmDeliveryRequest] = Field(min_length=1, max_length=MAX_RECEIPTS_PER_CALL)


class DeliveryReceipt(BaseModel):
    """The event's delivery state after the receipt; ``duplicate`` when already recorded."""

    event_id: UUID
    status: ReceiptStatus
    duplicate: bool
    deliver_status: str
    delivered_at: datetime | None
    deliver_try_count: int


class DeliveryReceipts(BaseModel):
    """The answer to several receipts: ``items`` for the recorded ones (duplicates too) in
    the order sent; ``not_found`` for event ids this tenant has no event of."""

    items: list[DeliveryReceipt]
    not_found: list[UUID]
