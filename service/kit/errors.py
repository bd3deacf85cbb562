"""One error hierarchy; each class carries its HTTP status. Services raise these."""

from __future__ import annotations


class FintegrateError(Exception):
    """Base error: an HTTP status and a specific, actionable description."""

    status_code = 500
    default_description = "Internal server error; the failure was logged with the request id"

    def __init__(self, description: str | None = None, headers: dict[str, str] | None = None):
        self.description = description or self.default_description
        self.headers = headers or {}
        super().__init__(self.description)


class BadRequest(FintegrateError):
    status_code = 400
    default_description = "The request is malformed"


class Unauthorized(FintegrateError):
    status_code = 401
    default_description = "Missing or invalid API key; send a valid key in the X-API-Key header"


class Forbidden(FintegrateError):
    status_code = 403
    default_description = "This credential is not allowed to perform this operation"


class NotFound(FintegrateError):
    status_code = 404
    default_description = "Resource not found"


class Conflict(FintegrateError):
    status_code = 409
    default_description = "The resource already exists"


class Unprocessable(FintegrateError):
    status_code = 422
    default_description = "The request body failed validation"


class TooManyRequests(FintegrateError):
    status_code = 429
    default_description = "Rate limit exceeded; retry after the number of seconds in Retry-After"


class ServiceUnavailable(FintegrateError):
    status_code = 503
    default_description = "A required dependency is unavailable; retry shortly"


def first_line(exc: BaseException | None) -> str:
    """The first line of ``exc``'s message (one-line errors and logs), else its type's name."""
    message = str(exc if exc is not None else "").strip()
    return message.splitlines()[0] if message else type(exc).__name__
