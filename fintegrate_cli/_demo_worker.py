"""The demo's in-process event consumer: the real worker, run in a thread for one tenant."""

from __future__ import annotations

import threading

from service.config import Settings
from service.messaging.consume import EventMessage, WorkerConfig
from service.messaging.consume.consumer import EventConsumer

STOP_TIMEOUT_SECONDS = 10.0


class DemoWorker:
    """``EventConsumer`` on the demo tenant's queue; records each event id it receives."""

    def __init__(self, settings: Settings, api_key: str, consumer_name: str, received: set[str]):
        self.received = received
        self.stop_event = threading.Event()
        config = WorkerConfig.from_settings(settings).model_copy(update={"api_key": api_key})
        self.consumer = EventConsumer(config, consumer_name, self.stop_event, self.record)
        self.thread = threading.Thread(target=self.consumer.run, name="demo-worker", daemon=True)

    def record(self, message: EventMessage) -> None:
        self.received.add(str(message.event_id))

    def start(self) -> DemoWorker:
        self.thread.start()
        return self

    def stop(self) -> None:
        """Stop after the message in hand (its receipt is recorded first)."""
        self.stop_event.set()
        self.thread.join(STOP_TIMEOUT_SECONDS)


def start(settings: Settings, api_key: str, consumer_name: str, received: set[str]) -> DemoWorker:
    """Start consuming ``consumer_name``'s queue in a thread; ids seen go into ``received``."""
    return DemoWorker(settings, api_key, consumer_name, received).start()
