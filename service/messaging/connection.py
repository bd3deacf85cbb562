"""RabbitMQ connections: parameters with short timeouts, and bounded-backoff reconnects.

pika is not thread-safe: open one connection per thread and never share it.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
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
    """A BlockingConnection; raises BrokerUnavailable within about ``2 * connect_timeout``."""
    parameters = connection_parameters(url, connect_timeout=connect_timeout, heartbeat=heartbeat)
    try:
        return pika.BlockingConnection(parameters)
    except CONNECT_ERRORS as exc:
        raise BrokerUnavailable(f"RabbitMQ at {describe_url(url)} is unreachable: {exc!r}") from exc


def describe_url(url: str) -> str:
    """``host:port/vhost`` of an AMQP URL, without credentials."""
    parts = urlsplit(url)
    vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
    return f"{parts.hostname}:{parts.port or 5672}/{vhost}"


def vhost_of(url: str) -> str:
    """The virtual host named by an AMQP URL (``/`` when absent)."""
    path = urlsplit(url).path
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


def retry_with_backoff(
    attempt: Callable[[], T],
    stop: threading.Event,
    backoff: Backoff | None = None,
    retry_on: tuple[type[BaseException], ...] = (BrokerUnavailable,),
    max_attempts: int | None = None,
) -> T | None:
    """Call ``attempt`` until it succeeds; None when ``stop`` is set or attempts run out."""
    delays = backoff or Backoff()
    tries = 0
    while not stop.is_set():
        try:
            return attempt()
        except retry_on as exc:
            tries += 1
            if max_attempts is not None and tries >= max_attempts:
                raise
            delay = delays.next_delay()
            log.warning("%s; retrying in %.1fs", exc, delay)
            stop.wait(delay)
    return None
