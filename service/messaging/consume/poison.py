"""What keeps the worker alive whatever a message or a handler does.

``decode_message`` turns every way a body can be unreadable (not JSON, a bad encoding,
nesting deep enough to exhaust the parser's recursion, the wrong shape, anything else the
parser raises) into ``InvalidMessage``: the worker dead-letters it and goes on.
``call_handler`` turns every way a handler can fail, ``SystemExit`` and
``KeyboardInterrupt`` raised by the handler included, into a ``failed`` receipt whose
detail can always be encoded (``describe_failure``): the message is dead-lettered once
with that reason, never redelivered in a loop. The worker's own stop signals never raise
(``service.messaging.shutdown`` sets a flag), so nothing here swallows a real shutdown.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from typing import Any

from service.messaging.messages import EventMessage, InvalidMessage, parse_message

log = logging.getLogger(__name__)

MAX_DETAIL_CHARS = 2000


def decode_message(body: bytes) -> EventMessage:
    """The event in ``body``; InvalidMessage for anything that is not one."""
    try:
        return parse_message(body)
    except InvalidMessage:
        raise
    except RecursionError as exc:
        raise InvalidMessage("body is nested too deeply to parse") from exc
    except Exception as exc:
        raise InvalidMessage(f"body cannot be read: {describe_failure(exc)}") from exc


def call_handler(
    handler: Callable[[EventMessage], Any], message: EventMessage
) -> tuple[str, str | None]:
    """Run the handler: ``("processed", None)``, or ``("failed", reason)`` whatever it raised."""
    try:
        handler(message)
    except BaseException as exc:  # SystemExit/KeyboardInterrupt from a handler are its failures
        detail = describe_failure(exc)
        log.error("handler failed for %s: %s\n%s", message.event_id, detail, safe_traceback(exc))
        return "failed", detail
    return "processed", None


def safe_traceback(exc: BaseException) -> str:
    """The traceback as text a log handler can always encode (no lone surrogate)."""
    try:
        text = "".join(traceback.format_exception(exc))
    except Exception:
        text = f"{type(exc).__name__} (no traceback available)"
    return _encodable(text)


def _encodable(text: str) -> str:
    return text.encode("utf-8", errors="replace").decode("utf-8")


def describe_failure(exc: BaseException) -> str:
    """``Type: message``, safe to log and to send as JSON: never raises, no lone surrogate,
    at most ``MAX_DETAIL_CHARS`` characters."""
    try:
        text = f"{type(exc).__name__}: {exc}"
    except Exception:
        text = f"{type(exc).__name__}: (its message cannot be shown)"
    return _encodable(text)[:MAX_DETAIL_CHARS]
