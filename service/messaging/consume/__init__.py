"""Consume: the event worker, its per-customer lanes, receipts and poison handling.

The public surface a tenant imports with only pika, httpx and pydantic installed
(docs/events.md "The worker as a library"): ``Worker`` (a handler per event type, ``run``
until SIGTERM/SIGINT), ``WorkerConfig`` (the ``FINTEGRATE_*`` variables it reads),
``EventMessage`` (what a handler gets) and ``verify_webhook`` (a webhook delivery checked
and read as the same event).
"""

from service.messaging.consume.config import WorkerConfig
from service.messaging.consume.consumer import ConsumerStats
from service.messaging.consume.receipts import WorkerUnauthorized
from service.messaging.consume.webhook import verify_webhook
from service.messaging.consume.worker import Worker
from service.messaging.messages import EventMessage, InvalidMessage
from service.webhooks.signing import InvalidSignature

__all__ = [
    "ConsumerStats",
    "EventMessage",
    "InvalidMessage",
    "InvalidSignature",
    "Worker",
    "WorkerConfig",
    "WorkerUnauthorized",
    "verify_webhook",
]
