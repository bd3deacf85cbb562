"""Tenants' own RabbitMQ users, managed through the management API.

Each consumer gets a user allowed to read (consume, basic.get, ack, reject) exactly its
queue and DLQ: no configure and no write permission, so it can neither declare, bind,
delete nor publish anything (not even to the default exchange). The password is random,
shown once, and replaced by ``issue`` (rotation). While the consumer is disabled the user
has no permission on the vhost, so its logins are refused, and its open connections are
closed. Without ``FINTEGRATE_RABBITMQ_MANAGEMENT_URL`` no tenant user exists.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from urllib.parse import quote, urlsplit, urlunsplit

from service.config import BrokerSettings
from service.messaging import topology
from service.messaging.connection import split_urls, vhost_of
from service.messaging.operate.management import ManagementClient, ManagementUnavailable

logger = logging.getLogger(__name__)

PASSWORD_BYTES = 24
DISABLED_REASON = "Fintegrate consumer disabled"
ROTATED_REASON = "Fintegrate broker credentials rotated"


@dataclass(frozen=True)
class BrokerCredentials:
    """A tenant's broker login; the password is shown once."""

    username: str
    password: str
    vhost: str


class BrokerAccounts:
    """Creates, rotates, suspends and restores tenant users on the settings' vhost."""

    def __init__(self, settings: BrokerSettings) -> None:
        self.management_url = settings.management_url
        self.vhost = vhost_of(settings.url)

    @property
    def configured(self) -> bool:
        return bool(self.management_url)

    def username(self, consumer_name: str) -> str:
        return topology.broker_username(consumer_name, self.vhost)

    def issue(self, consumer_name: str, active: bool = True) -> BrokerCredentials:
        """Create the user or give it a new password; close sessions of the old one.

        Raises ManagementUnavailable (also when no management URL is configured).
        """
        username = self.username(consumer_name)
        password = secrets.token_urlsafe(PASSWORD_BYTES)
        with self._client() as client:
            client.put_user(username, password)
            if active:
                self._grant(client, consumer_name)
            else:
                client.clear_permissions(username)
            client.close_connections(username, ROTATED_REASON)
        return BrokerCredentials(username=username, password=password, vhost=self.vhost)

    def suspend(self, consumer_name: str) -> None:
        """Refuse the user's logins and close its connections (a disabled consumer)."""
        if not self.configured:
            return
        username = self.username(consumer_name)
        with self._client() as client:
            client.clear_permissions(username)
            closed = client.close_connections(username, DISABLED_REASON)
        logger.info("broker user %s suspended, %d connection(s) closed", username, closed)

    def restore(self, consumer_name: str) -> None:
        """Give an existing user its read permission back (a re-enabled consumer)."""
        if not self.configured:
            return
        with self._client() as client:
            if client.user(self.username(consumer_name)) is not None:
                self._grant(client, consumer_name)

    def _grant(self, client: ManagementClient, consumer_name: str) -> None:
        client.set_permissions(
            self.username(consumer_name),
            configure=topology.NO_RESOURCE,
            write=topology.NO_RESOURCE,
            read=topology.broker_read_permission(consumer_name),
        )

    def _client(self) -> ManagementClient:
        if not self.management_url:
            raise ManagementUnavailable("FINTEGRATE_RABBITMQ_MANAGEMENT_URL is not configured")
        return ManagementClient(self.management_url, self.vhost)


def tenant_broker_url(rabbitmq_url: str, username: str, password: str) -> str:
    """``rabbitmq_url`` (host, port, vhost, query) with the tenant's login in place of its own.

    A list of nodes stays a list: users and permissions are cluster-wide, so the tenant's
    login works on every node.
    """
    return ",".join(_with_login(node, username, password) for node in split_urls(rabbitmq_url))


def _with_login(url: str, username: str, password: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    netloc = f"{quote(username, safe='')}:{quote(password, safe='')}@{host}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
