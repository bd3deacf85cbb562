"""A small client for the RabbitMQ management HTTP API (queues, their arguments, bindings)."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx

from service.messaging import topology

TIMEOUT_SECONDS = 3.0


class ManagementUnavailable(Exception):
    """The management API could not be reached or answered an error."""


class ManagementClient:
    """Reads queue state of one vhost; credentials come from the URL's userinfo."""

    def __init__(self, base_url: str, vhost: str, timeout: float = TIMEOUT_SECONDS):
        self.vhost = vhost
        self._http = httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ManagementClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def queue(self, name: str) -> dict[str, Any] | None:
        """The queue's description (arguments, durable, messages, consumers) or None."""
        return self._get(f"/api/queues/{self._vhost_path}/{quote(name, safe='')}")

    def queues(self) -> list[dict[str, Any]]:
        """Every queue of the vhost."""
        return self._get(f"/api/queues/{self._vhost_path}") or []

    def exchange_bindings(self, queue: str, exchange: str = topology.EXCHANGE) -> list[str]:
        """Routing keys binding ``queue`` to ``exchange`` (the default exchange excluded)."""
        path = f"/api/queues/{self._vhost_path}/{quote(queue, safe='')}/bindings"
        bindings = self._get(path) or []
        return sorted(b["routing_key"] for b in bindings if b.get("source") == exchange)

    @property
    def _vhost_path(self) -> str:
        return quote(self.vhost, safe="")

    def _get(self, path: str) -> Any:
        try:
            response = self._http.get(path)
        except httpx.HTTPError as exc:
            raise ManagementUnavailable(f"management API unreachable: {exc!r}") from exc
        if response.status_code == 404:
            return None
        if response.is_error:
            raise ManagementUnavailable(
                f"management API answered {response.status_code} for {path}"
            )
        return response.json()
