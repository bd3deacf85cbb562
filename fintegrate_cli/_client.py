"""The HTTP client for the Fintegrate API: envelope errors become one CliError."""

from __future__ import annotations

from typing import Any

import httpx

from fintegrate_cli._errors import CliError


class ApiError(CliError):
    """The API answered with an error envelope."""

    def __init__(self, status_code: int, description: str):
        super().__init__(f"API error {status_code}: {description}")
        self.status_code = status_code
        self.description = description


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
    raise ApiError(response.status_code, str(description))
