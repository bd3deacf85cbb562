"""A webhook delivery (SPEC 8) checked and read as the event a queue would have carried.

The tenant's HTTP endpoint hands it the raw body and the request headers; the signature is
checked by the platform's own signing code (``service.webhooks.signing.verify``), then the
body is read like a queue message, so the same handlers serve both channels.
"""

from __future__ import annotations

from collections.abc import Mapping

from service.messaging.consume.poison import decode_message
from service.messaging.messages import EventMessage
from service.webhooks.signing import InvalidSignature, verify

SIGNED_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")


def verify_webhook(
    body: bytes, headers: Mapping[str, str], secret: str, now: float | None = None
) -> EventMessage:
    """The event of a delivery signed with ``secret`` (the endpoint's ``whsec_…``).

    ``body`` is the request body exactly as received. Raises ``InvalidSignature`` for a
    missing header or a forged or replayed delivery, ``InvalidMessage`` for a signed body
    that is no event (both ValueError: answer 400).
    """
    given = {name.lower(): value for name, value in headers.items()}
    missing = [name for name in SIGNED_HEADERS if name not in given]
    if missing:
        raise InvalidSignature(f"missing header {', '.join(missing)}")
    message_id, timestamp, signatures = (given[name] for name in SIGNED_HEADERS)
    verify(secret, message_id, timestamp, body, signatures, now)
    return decode_message(body)
