"""What the worker reads from its environment, on plain pydantic.

A tenant's worker installs pika, httpx and pydantic only (docs/events.md "The worker as a
library"), so this model does not come from ``service.config`` (pydantic-settings): it
reads the same ``FINTEGRATE_*`` names from the environment itself (``from_env``), and the
CLI builds it from the full settings (``from_settings``), which also read ``.env`` and
flags. The defaults are the full settings' (tests/service/messaging/consume/test_worker.py
holds them to it).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from service.config import Settings


class WorkerConfig(BaseModel):
    """The broker, the API and the worker's limits; each field's alias is its variable."""

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    rabbitmq_url: str = Field(
        default="amqp://fintegrate_user:fintegrate_pass@127.0.0.1:5672/fintegrate",
        alias="FINTEGRATE_RABBITMQ_URL",
    )
    api_url: str = Field(default="http://127.0.0.1:8000", alias="FINTEGRATE_API_URL")
    api_key: str | None = Field(default=None, alias="FINTEGRATE_API_KEY")
    prefetch: int = Field(default=20, ge=1, alias="FINTEGRATE_CONSUMER_PREFETCH")
    message_ttl_ms: int = Field(default=86_400_000, ge=1, alias="FINTEGRATE_QUEUE_MESSAGE_TTL_MS")
    max_in_hand_per_customer: int = Field(
        default=4, ge=1, alias="FINTEGRATE_WORKER_MAX_IN_HAND_PER_CUSTOMER"
    )
    recovery_interval_seconds: float = Field(
        default=60.0, gt=0, alias="FINTEGRATE_WORKER_RECOVERY_INTERVAL_SECONDS"
    )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> WorkerConfig:
        """The ``FINTEGRATE_*`` variables of ``environ``; defaults for the ones not set."""
        return cls.model_validate(dict(environ))

    @classmethod
    def from_settings(cls, settings: Settings) -> WorkerConfig:
        """The worker's part of the full settings (environment, ``.env`` and CLI flags)."""
        return cls(
            rabbitmq_url=settings.rabbitmq_url,
            api_url=settings.api_url,
            api_key=settings.api_key,
            prefetch=settings.consumer_prefetch,
            message_ttl_ms=settings.queue_message_ttl_ms,
            max_in_hand_per_customer=settings.worker_max_in_hand_per_customer,
            recovery_interval_seconds=settings.worker_recovery_interval_seconds,
        )
