"""The demo's in-process event consumer: confirms each event of the demo tenant's queue."""

from __future__ import annotations

from typing import Protocol

from service.config import Settings


class WorkerHandle(Protocol):
    def stop(self) -> None: ...


def start(settings: Settings, api_key: str, consumer_name: str, received: set[str]) -> WorkerHandle:
    """Start consuming ``consumer_name``'s queue in a thread; ids seen go into ``received``."""
    raise NotImplementedError("the in-process demo worker waits for service.messaging.consumer")
