"""A small client for the RabbitMQ management HTTP API.

Reads queue state (arguments, bindings, depth), the cluster's nodes, and manages the
tenants' own broker users: users, their permissions on the client's vhost, and their open
connections. Users and permissions are cluster-wide, so any node's API serves them. The base
URL may list several nodes, comma-separated: a request goes to the node that answered last
and moves on to the next when a node cannot be reached.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, unquote

import httpx

from service.messaging import topology
from service.messaging.connection import BrokerNodes

TIMEOUT_SECONDS = 3.0
# A node that is starting or shutting down answers these; the next node may serve.
NODE_DOWN_STATUSES = frozenset({502, 503, 504})


class ManagementUnavailable(Exception):
    """The management API could not be reached or answered an error."""


class ManagementClient:
    """Reads queue state of one vhost; credentials come from the URL's userinfo."""

    def __init__(self, base_url: str, vhost: str, timeout: float = TIMEOUT_SECONDS):
        self.vhost = vhost
        self._nodes = BrokerNodes.of(base_url)
        self._http = httpx.Client(timeout=timeout)

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

    def nodes(self) -> list[dict[str, Any]]:
        """Every node of the cluster as the answering node sees it (name, running, type)."""
        return self._get("/api/nodes") or []

    def user(self, username: str) -> dict[str, Any] | None:
        """The broker user's description, or None when it does not exist."""
        return self._get(f"/api/users/{quote(username, safe='')}")

    def put_user(self, username: str, password: str) -> None:
        """Create the user, or set a new password (no tags: it cannot use this API)."""
        self._send(
            "PUT", f"/api/users/{quote(username, safe='')}", {"password": password, "tags": ""}
        )

    def set_permissions(self, username: str, configure: str, write: str, read: str) -> None:
        """The user's permissions on this vhost (regular expressions over resource names)."""
        body = {"configure": configure, "write": write, "read": read}
        self._send("PUT", self._permissions_path(username), body)

    def clear_permissions(self, username: str) -> None:
        """Remove the user's access to this vhost: its next login here is refused."""
        self._send("DELETE", self._permissions_path(username))

    def close_connections(self, username: str, reason: str) -> int:
        """Close every connection the user holds; how many it held.

        The per-user endpoints read connection tracking, so they see a connection at once
        (``/api/connections`` waits for the next statistics interval).
        """
        path = f"/api/connections/username/{quote(username, safe='')}"
        held = len(self._get(path) or [])
        if held:
            self._send("DELETE", path, headers={"X-Reason": reason})
        return held

    def _permissions_path(self, username: str) -> str:
        return f"/api/permissions/{self._vhost_path}/{quote(username, safe='')}"

    @property
    def _vhost_path(self) -> str:
        return quote(self.vhost, safe="")

    def _get(self, path: str) -> Any:
        response = self._request("GET", path)
        return None if response.status_code == 404 else response.json()

    def _send(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        """A write; a 404 (already gone) is not an error."""
        self._request(method, path, body, headers)

    def _request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        failures = []
        for node in self._nodes.in_order():
            base, auth = _without_credentials(node)
            try:
                response = self._http.request(
                    method, f"{base}{path}", json=body, headers=headers, auth=auth
                )
            except httpx.HTTPError as exc:
                failures.append(f"{base}: {exc!r}")
                continue
            if response.status_code not in NODE_DOWN_STATUSES:
                self._nodes.answered(node)
                break
            failures.append(f"{base}: {response.status_code}")
        else:
            reason = "; ".join(failures)
            raise ManagementUnavailable(f"management API unreachable ({reason})")
        if response.is_error and response.status_code != 404:
            raise ManagementUnavailable(
                f"management API answered {response.status_code} for {method} {path}"
            )
        return response


def _without_credentials(url: str) -> tuple[str, tuple[str, str] | None]:
    """The node's base URL without userinfo, and the credentials for the auth header.

    httpx logs request URLs (INFO), and the operator's password must never reach a log line.
    """
    parsed = httpx.URL(url.rstrip("/"))
    auth = (unquote(parsed.username), unquote(parsed.password)) if parsed.username else None
    return str(parsed.copy_with(username=None, password=None)), auth
