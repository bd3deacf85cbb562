"""The statuses a route declares in OpenAPI, in one place.

Every route passes ``responses=declared(...)``: the groups of what its guards can answer
(``AUTHENTICATED``, ``WITH_BODY``, ``WITH_PARAMETERS``) plus the statuses of its own rules
(404, 409 …). ``tests/service/test_openapi_statuses.py`` checks every route of the app
against its dependencies, so a new route that forgets a group fails there, not in a
client's generated code.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from service.http.schemas import error_responses

# Any route: an unexpected error still answers the envelope.
EVERY_ROUTE = (500,)
# A route behind X-API-Key or X-Admin-Key: a key refused (401); a disabled consumer, or a
# tenant key on an operator route (403); a throttle (429: the per-key rate limit, and the
# failed-auth throttle of tenant and admin keys, which guards every authenticated route);
# the bcrypt gate busy or the database away (503).
AUTHENTICATED = (401, 403, 429, 503)
# A request body: unreadable JSON (400), over FINTEGRATE_MAX_BODY_BYTES (413), invalid (422).
WITH_BODY = (400, 413, 422)
# Path, query or header parameters: invalid (422).
WITH_PARAMETERS = (422,)
# A route that reads the database without a tenant key (readiness): the database away.
DATABASE = (503,)


def declared(*groups: int | Iterable[int]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the error statuses in ``groups`` (500 always included)."""
    statuses: set[int] = set(EVERY_ROUTE)
    for group in groups:
        statuses.update([group] if isinstance(group, int) else group)
    return error_responses(*sorted(statuses))
