"""Delivery endpoints: ``POST /events/resend``, ``/redeliver``, ``/confirm-delivery`` and
``/confirm-deliveries``."""

from __future__ import annotations

from functools import partial
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from service.delivery import service
from service.delivery.schemas import (
    ConfirmDeliveriesRequest,
    ConfirmDeliveryRequest,
    DeliveryReceipt,
    DeliveryReceipts,
    RepublishOutcome,
    RepublishRequest,
)
from service.delivery.service import PublisherFactory
from service.http.deps import AppSettings, Caller, CurrentConsumer, DbSession
from service.http.envelope import success
from service.http.responses import AUTHENTICATED, WITH_BODY, declared
from service.http.schemas import Envelope
from service.kit.request import db_pool_of
from service.messaging.publish.publisher import ConfirmingPublisher

router = APIRouter(prefix="/events", tags=["delivery"])
REPUBLISH_ERRORS = declared(AUTHENTICATED, WITH_BODY, 404)


def publisher_factory(settings: AppSettings) -> PublisherFactory:
    """A new publisher per request (one connection, closed after the call)."""
    return partial(ConfirmingPublisher, settings.broker.url)


Publishers = Annotated[PublisherFactory, Depends(publisher_factory)]


@router.post("/resend", response_model=Envelope[RepublishOutcome], responses=REPUBLISH_ERRORS)
def resend_events(
    body: RepublishRequest,
    principal: Caller,
    connection: DbSession,
    publishers: Publishers,
    settings: AppSettings,
) -> JSONResponse:
    """Publish events still ``pending`` now, in aggregate order; ``dry_run`` previews."""
    return success(service.republish(connection, "resend", body, principal, publishers, settings))


@router.post("/redeliver", response_model=Envelope[RepublishOutcome], responses=REPUBLISH_ERRORS)
def redeliver_events(
    body: RepublishRequest,
    principal: Caller,
    connection: DbSession,
    publishers: Publishers,
    settings: AppSettings,
) -> JSONResponse:
    """Publish again events ``published`` but not ``delivered``, in aggregate order."""
    return success(
        service.republish(connection, "redeliver", body, principal, publishers, settings)
    )


@router.post(
    "/confirm-delivery",
    response_model=Envelope[DeliveryReceipt],
    responses=declared(AUTHENTICATED, WITH_BODY, 404),
)
async def confirm_delivery(
    body: ConfirmDeliveryRequest, request: Request, consumer: CurrentConsumer
) -> JSONResponse:
    """Record a delivery receipt; a duplicate answers 200 with ``duplicate: true``."""
    pool = db_pool_of(request)  # hot route: one dependency fewer
    return success(await service.confirm_delivery(pool, consumer.consumer_id, body))


@router.post(
    "/confirm-deliveries",
    response_model=Envelope[DeliveryReceipts],
    responses=declared(AUTHENTICATED, WITH_BODY),
)
async def confirm_deliveries(
    body: ConfirmDeliveriesRequest, request: Request, consumer: CurrentConsumer
) -> JSONResponse:
    """Record up to ``MAX_RECEIPTS_PER_CALL`` receipts, each as confirm-delivery would; an
    event id this tenant has no event of is answered in ``not_found``."""
    return success(
        await service.confirm_deliveries(db_pool_of(request), consumer.consumer_id, body)
    )
