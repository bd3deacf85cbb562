"""The HTTP client for the Fintegrate API: envelope errors become one CliError."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

import httpx

from fintegrate_cli._errors import EXIT_USAGE, CliError
from service.config import Settings

KeyNeed = Literal["admin", "tenant", "either", "none"]
ADMIN_KEY_HINT = "pass --admin-key or set FINTEGRATE_ADMIN_API_KEY"
TENANT_KEY_HINT = "pass --api-key or set FINTEGRATE_API_KEY"


class ApiError(CliError):
    """The API answered with an error envelope."""

    def __init__(self, status_code: int, description: str, retry_after: float | None = None):
        super().__init__(f"API error {status_code}: {description}")
        self.status_code = status_code
        self.description = description
        self.retry_after = retry_after


class ApiClient:
    """A thin client over httpx; each call returns the envelope's ``data``."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        admin_key: str | None = None,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ):
        headers = {"User-Agent": "fintegrate-cli"}
        if api_key:
            headers["X-API-Key"] = api_key
        if admin_key:
            headers["X-Admin-Key"] = admin_key
        self.base_url = base_url.rstrip("/")
        self.is_admin = bool(admin_key)
        self._http = httpx.Client(
            base_url=self.base_url, headers=headers, timeout=timeout, transport=transport
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """Send a request and return ``data``; raise ApiError or CliError on failure."""
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            raise CliError(
                f"API at {self.base_url} timed out on {method} {path}; check it is healthy"
            ) from exc
        except httpx.TransportError as exc:
            raise CliError(
                f"API at {self.base_url} is unreachable ({type(exc).__name__}); start it with "
                "`fintegrate serve` or set --api-url / FINTEGRATE_API_URL"
            ) from exc
        return unwrap(response)

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Any:
        return self.request("POST", path, **kwargs)

    def patch(self, path: str, **kwargs: Any) -> Any:
        return self.request("PATCH", path, **kwargs)

    def put(self, path: str, **kwargs: Any) -> Any:
        return self.request("PUT", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> Any:
        return self.request("DELETE", path, **kwargs)

    def page(self, path: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """One page (``{items, next_cursor, count}``) of a listing; None parameters are left out."""
        return dict(self.get(path, params=_given(params)))

    def pages(self, path: str, params: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
        """Each page (``{items, next_cursor, count}``) of a listing, following ``next_cursor``."""
        query = _given(params)
        while True:
            page = self.get(path, params=query)
            yield page
            cursor = page.get("next_cursor")
            if not cursor:
                return
            query["cursor"] = cursor

    def all_items(self, path: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Every item of a listing, across all pages."""
        return [item for page in self.pages(path, params) for item in page.get("items", [])]


def _given(params: dict[str, Any] | None) -> dict[str, Any]:
    """The query parameters that have a value."""
    return {key: value for key, value in (params or {}).items() if value is not None}


def unwrap(response: httpx.Response) -> Any:
    """The envelope's data on 2xx; ApiError with the envelope's description otherwise."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict) or "detail" not in body:
        if response.is_success:
            raise CliError(
                f"API answered {response.status_code} without an envelope; is "
                f"{response.url} a Fintegrate API?"
            )
        raise ApiError(response.status_code, response.reason_phrase or "error")
    if response.is_success:
        return body.get("data", {})
    detail = body.get("detail") or {}
    description = detail.get("status_description") if isinstance(detail, dict) else str(detail)
    raise ApiError(response.status_code, str(description), _retry_after(response))


def _retry_after(response: httpx.Response) -> float | None:
    """Seconds from a numeric ``Retry-After`` header, if there is one."""
    try:
        return float(response.headers["Retry-After"])
    except (KeyError, ValueError):
        return None


def require_keys(settings: Settings, need: KeyNeed, command: str) -> None:
    """Raise a usage error (exit 2) naming the flag/env var when a needed key is missing."""
    admin, tenant = settings.admin_api_key, settings.api_key
    if need == "admin" and not admin:
        raise CliError(f"{command} needs the operator key: {ADMIN_KEY_HINT}", EXIT_USAGE)
    if need == "tenant" and not tenant:
        raise CliError(f"{command} needs a tenant API key: {TENANT_KEY_HINT}", EXIT_USAGE)
    if need == "either" and not (admin or tenant):
        raise CliError(f"{command} needs a key: {ADMIN_KEY_HINT}, or {TENANT_KEY_HINT}", EXIT_USAGE)


def api_client(
    settings: Settings, need: KeyNeed = "none", command: str = "this command", **kwargs: Any
) -> ApiClient:
    """An ApiClient from settings, after checking the keys ``need`` asks for are set.

    ``"admin"`` sends only the operator key, ``"tenant"`` only the tenant key,
    ``"either"`` the operator key when set (else the tenant key), ``"none"`` both if set.
    """
    require_keys(settings, need, command)
    admin_key = None if need == "tenant" else settings.admin_api_key
    api_key = None if need == "admin" or (need == "either" and admin_key) else settings.api_key
    return ApiClient(settings.api_url, api_key=api_key, admin_key=admin_key, **kwargs)
