"""RabbitMQ connections: parameters with short timeouts, and bounded-backoff reconnects.

``FINTEGRATE_RABBITMQ_URL`` may name several nodes of one cluster, comma-separated (same
credentials and vhost). A connection goes to the first node that answers, starting from the
node that answered last in this process, so a node that died is tried once (a refused
connect costs nothing) and the next one takes over; callers keep their own back-off.

pika is not thread-safe: open one connection per thread and never share it.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import unquote, urlsplit

import pika
import pika.exceptions
from pika.adapters.utils.connection_workflow import AMQPConnectorException

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_SECONDS = 3.0
HEARTBEAT_SECONDS = 30
BLOCKED_CONNECTION_TIMEOUT_SECONDS = 30.0
T = TypeVar("T")

# Errors that mean "the broker or the link to it is gone": reconnect and retry.
BROKER_ERRORS: tuple[type[BaseException], ...] = (
    pika.exceptions.AMQPConnectionError,
    pika.exceptions.AMQPChannelError,
    pika.exceptions.StreamLostError,
    AMQPConnectorException,
    ConnectionError,
    OSError,
)

# pika raises ValueError when the socket is reset between connect() and its getpeername()
# check: the same "broker unreachable", seen during a broker restart.
CONNECT_ERRORS: tuple[type[BaseException], ...] = (*BROKER_ERRORS, ValueError)


class BrokerUnavailable(Exception):
    """The broker could not be reached or dropped the connection."""


def connection_parameters(
    url: str,
    *,
    connect_timeout: float = CONNECT_TIMEOUT_SECONDS,
    heartbeat: int = HEARTBEAT_SECONDS,
) -> pika.URLParameters:
    """Parameters from an AMQP URL with one connect attempt and short socket timeouts."""
    parameters = pika.URLParameters(url)
    parameters.connection_attempts = 1
    parameters.socket_timeout = connect_timeout
    parameters.stack_timeout = connect_timeout * 2
    parameters.blocked_connection_timeout = BLOCKED_CONNECTION_TIMEOUT_SECONDS
    parameters.heartbeat = heartbeat
    parameters.client_properties = {"connection_name": "fintegrate"}
    return parameters


def open_blocking(
    url: str,
    *,
    connect_timeout: float = CONNECT_TIMEOUT_SECONDS,
    heartbeat: int = HEARTBEAT_SECONDS,
) -> pika.BlockingConnection:
    """A BlockingConnection to the first node of ``url`` (one or a list) that answers.

    Raises BrokerUnavailable, naming every node tried, when none answers; each node costs
    at most about ``2 * connect_timeout``.
    """

    def connect(node: str) -> pika.BlockingConnection:
        parameters = connection_parameters(
            node, connect_timeout=connect_timeout, heartbeat=heartbeat
        )
        return pika.BlockingConnection(parameters)

    return first_answering(url, connect, CONNECT_ERRORS)


def first_answering(
    urls: str, connect: Callable[[str], T], errors: tuple[type[BaseException], ...]
) -> T:
    """``connect(node)`` for each node of ``urls`` in turn until one succeeds.

    The node that succeeded is tried first next time (see ``BrokerNodes``). Raises
    BrokerUnavailable naming each node and its error when every node failed with ``errors``.
    """
    nodes = BrokerNodes.of(urls)
    failures = []
    for node in nodes.in_order():
        try:
            connection = connect(node)
        except errors as exc:
            reason = str(exc) if isinstance(exc, BrokerUnavailable) else repr(exc)
            failures.append(f"{describe_url(node)}: {reason}")
            continue
        nodes.answered(node)
        return connection
    where = "; ".join(failures)
    raise BrokerUnavailable(f"RabbitMQ is unreachable ({where})")


def split_urls(value: str) -> list[str]:
    """The URLs of a comma-separated list (one per broker node), blanks dropped."""
    return [url.strip() for url in value.split(",") if url.strip()]


class BrokerNodes:
    """The nodes of one URL list and which one answered last in this process.

    One instance per distinct list (``BrokerNodes.of``), shared by every thread: the
    preferred node is a hint only, so a race between two threads costs one extra connect.
    """

    _known: dict[str, BrokerNodes] = {}
    _lock = threading.Lock()

    def __init__(self, urls: list[str]):
        if not urls:
            raise ValueError("no broker URL given")
        self.urls = urls
        self._preferred = 0

    @classmethod
    def of(cls, value: str) -> BrokerNodes:
        with cls._lock:
            nodes = cls._known.get(value)
            if nodes is None:
                nodes = cls._known[value] = cls(split_urls(value))
            return nodes

    def in_order(self) -> Iterator[str]:
        """Every node once, starting with the one that answered last."""
        start = self._preferred
        for offset in range(len(self.urls)):
            yield self.urls[(start + offset) % len(self.urls)]

    def answered(self, url: str) -> None:
        self._preferred = self.urls.index(url)

    def lost(self, url: str) -> None:
        """``url`` went silent: unless another node answered since, start after it."""
        if url in self.urls and self.preferred == url:
            self._preferred = (self.urls.index(url) + 1) % len(self.urls)

    @property
    def preferred(self) -> str:
        return self.urls[self._preferred]


def describe_url(url: str) -> str:
    """``host:port/vhost`` of an AMQP URL (each node of a list), without credentials."""
    return ",".join(_describe_node(node) for node in split_urls(url))


def _describe_node(url: str) -> str:
    parts = urlsplit(url)
    vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
    return f"{parts.hostname}:{parts.port or 5672}/{vhost}"


def vhost_of(url: str) -> str:
    """The virtual host named by an AMQP URL or the first of a list (``/`` when absent)."""
    path = urlsplit(split_urls(url)[0]).path
    return unquote(path[1:]) if len(path) > 1 else "/"


@dataclass
class Backoff:
    """Exponential backoff with full jitter, bounded by ``maximum`` seconds."""

    initial: float = 0.2
    maximum: float = 10.0
    attempt: int = 0

    def next_delay(self) -> float:
        """The delay before the next attempt; grows until ``maximum``."""
        ceiling = min(self.maximum, self.initial * (2**self.attempt))
        self.attempt += 1
        return random.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.attempt = 0
