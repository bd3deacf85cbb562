"""The worker as a library: a handler per event type over the tenant's queue.

``Worker`` is what a tenant imports (docs/events.md "The worker as a library") and what
``fintegrate consume`` runs: handlers are registered with ``@worker.on(event_type)``,
``dispatch`` picks one per event, and ``run`` drives ``EventConsumer`` until SIGTERM,
SIGINT or ``stop()``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

from service.kit import tracing
from service.messaging import topology
from service.messaging.consume.config import WorkerConfig
from service.messaging.consume.consumer import ConsumerStats, EventConsumer, Handler, log_event
from service.messaging.consume.receipts import DeliveryConfirmer
from service.messaging.messages import EventMessage
from service.messaging.shutdown import install_stop_handlers

IDENTITY_PATH = "/consumer/me"
H = TypeVar("H", bound=Handler)


class Worker:
    """Consumes one tenant's queue, calling the handler registered for each event's type.

    ``consumer`` is the tenant's name (default: the one its API key belongs to, asked from
    ``GET /consumer/me``); ``config`` defaults to the ``FINTEGRATE_*`` environment. Events of
    a type without a handler go to ``default`` (which logs them); either way the event is
    confirmed and acked, and a handler that raises sends it to the DLQ with a ``failed``
    receipt. The other options are ``EventConsumer``'s. A worker runs once.
    """

    def __init__(
        self,
        consumer: str | None = None,
        config: WorkerConfig | None = None,
        *,
        default: Handler = log_event,
        prefetch: int | None = None,
        concurrency: int | None = None,
        exclusive: bool = True,
    ):
        self.consumer = consumer
        self.config = config or WorkerConfig.from_env()
        self.default = default
        self.options: dict[str, Any] = {
            "prefetch": prefetch,
            "concurrency": concurrency,
            "exclusive": exclusive,
        }
        self._handlers: dict[str, Handler] = {}
        self._stop = threading.Event()

    def on(self, *event_types: str) -> Callable[[H], H]:
        """Register the decorated function for ``event_types`` (one handler per type)."""
        unknown = [name for name in event_types if name not in topology.EVENT_TYPES]
        if not event_types or unknown:
            raise ValueError(f"unknown event type {unknown}; expected {topology.EVENT_TYPES}")
        taken = [name for name in event_types if name in self._handlers]
        if taken:
            raise ValueError(f"{taken} already have a handler")

        def register(handler: H) -> H:
            self._handlers.update(dict.fromkeys(event_types, handler))
            return handler

        return register

    def dispatch(self, message: EventMessage) -> Any:
        """Call the handler of ``message``'s type (``default`` when none is registered)."""
        return self._handlers.get(message.event_type, self.default)(message)

    def run(self) -> ConsumerStats:
        """Consume until SIGTERM/SIGINT (in the main thread) or ``stop()``; then the events in
        hand finish (receipt, ack), the rest stay queued for the next run. What it did.

        Raises ``WorkerUnauthorized`` when the API refuses the key.
        """
        if not self.config.api_key:
            raise ValueError("FINTEGRATE_API_KEY (this tenant's key) is required to confirm")
        restore = install_stop_handlers(self._stop)
        tracing.configure("fintegrate-worker")
        confirmer = DeliveryConfirmer(self.config.api_url, self.config.api_key, self._stop)
        try:
            name = self.consumer or self._identify(confirmer)
            if name is None:  # stopped before the API answered
                return ConsumerStats()
            consumer = EventConsumer(
                self.config, name, self._stop, self.dispatch, confirmer=confirmer, **self.options
            )
            return consumer.run()
        finally:
            confirmer.close()
            restore()
            tracing.flush()

    def stop(self) -> None:
        """Ask ``run`` to stop as a signal would (from any thread)."""
        self._stop.set()

    @staticmethod
    def _identify(confirmer: DeliveryConfirmer) -> str | None:
        """The name of the consumer the key belongs to; None when stopped first."""
        identity = confirmer.read(IDENTITY_PATH, {})
        return None if identity is None else str(identity["name"])
