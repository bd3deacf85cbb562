"""Settings shared by the service, the relay, the worker and the CLI.

One class, environment prefix ``FINTEGRATE_``, optional ``.env`` file.
Precedence: explicit overrides (CLI flags) > environment > ``.env`` > defaults.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PLACEHOLDER_SECRETS = frozenset(
    {"changeme", "change-me", "change_me", "secret", "admin", "password", "placeholder", "xxx"}
)
SECRET_FIELDS = ("admin_api_key", "api_key", "webhook_encryption_key")
# A correct admin key always passes the per-address throttle: its length makes guessing it
# within that budget hopeless.
MIN_ADMIN_KEY_LENGTH = 32
SECRET_URL_FIELDS = ("database_url", "rabbitmq_url", "rabbitmq_management_url", "redis_url")
SHIPPED_DATABASE_SCHEME = "postgresql+psycopg2"
# What platforms hand out (``postgres://``, ``postgresql://``) and the explicit form. Since
# SQLAlchemy 2.1 a bare ``postgresql://`` means psycopg 3, which Fintegrate does not ship.
ACCEPTED_DATABASE_SCHEMES = frozenset({"postgres", "postgresql", SHIPPED_DATABASE_SCHEME})


def shipped_driver_url(url: str) -> str:
    """``url`` as a SQLAlchemy URL on the driver Fintegrate ships (psycopg2).

    ``postgres://`` and ``postgresql://`` are mapped to ``postgresql+psycopg2://``; the rest
    of the URL is kept byte for byte. Any other scheme or driver (``postgresql+psycopg://``,
    ``postgresql+asyncpg://``, ``sqlite://``) raises ValueError naming the accepted forms.
    """
    scheme, separator, rest = url.strip().partition("://")
    if separator and scheme.lower() in ACCEPTED_DATABASE_SCHEMES:
        return f"{SHIPPED_DATABASE_SCHEME}://{rest}"
    shown = f"{scheme}://" if separator else "a value without a scheme"
    raise ValueError(
        f"unsupported database URL ({shown}); use postgresql://, postgres:// or "
        f"postgresql+psycopg2:// (Fintegrate ships the psycopg2 driver)"
    )


def node_urls(setting: str, value: str, schemes: tuple[str, ...], same_path: bool = False) -> str:
    """``value`` as a clean comma-separated list of node URLs of one cluster.

    Each URL must use one of ``schemes`` and name a host; all must share the login (and,
    with ``same_path``, the vhost). Raises ValueError naming the setting otherwise.
    """
    urls = [url.strip() for url in value.split(",") if url.strip()]
    if not urls:
        raise ValueError(f"{setting} names no URL")
    logins = set()
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in schemes or not parts.hostname:
            raise ValueError(f"{setting}: every node needs a {' or '.join(schemes)}:// URL")
        logins.add((parts.username, parts.password, parts.path if same_path else ""))
    if len(logins) > 1:
        raise ValueError(f"{setting}: the nodes must share one login and vhost")
    return ",".join(urls)


class Settings(BaseSettings):
    """Every tunable of Fintegrate; see ``.env.example`` for documentation."""

    model_config = SettingsConfigDict(
        env_prefix="FINTEGRATE_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    environment: Literal["development", "test", "production"] = "development"
    opentelemetry: bool = False
    database_url: str = (
        "postgresql+psycopg2://fintegrate_user:fintegrate_pass@127.0.0.1:5432/fintegrate_db"
    )
    rabbitmq_url: str = "amqp://fintegrate_user:fintegrate_pass@127.0.0.1:5672/fintegrate"
    rabbitmq_management_url: str | None = None
    redis_url: str | None = "redis://127.0.0.1:6379/0"
    api_url: str = "http://127.0.0.1:8000"
    admin_api_key: str | None = None
    api_key: str | None = None

    rate_limit_api_key_per_minute: int = Field(default=50, ge=1)
    rate_limit_api_key_burst: int = Field(default=500, ge=1)
    bcrypt_rounds: int = Field(default=12, ge=4, le=16)
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)

    db_pool_size: int = Field(default=10, ge=1)
    db_statement_timeout_ms: int = Field(default=5000, ge=100)
    auth_cache_ttl_seconds: float = Field(default=5.0, ge=0)
    failed_auth_limit: int = Field(default=10, ge=1)
    failed_auth_window_seconds: int = Field(default=60, ge=1)
    auth_bcrypt_concurrency: int = Field(default=2, ge=1)
    redis_timeout_seconds: float = Field(default=0.05, gt=0)
    redis_retry_seconds: float = Field(default=5.0, gt=0)
    # Limits that hold under load (issue 24): the breaker opens after this many failed
    # Redis round trips in a row, not on one late reply.
    redis_breaker_failures: int = Field(default=3, ge=1)

    relay_batch_size: int = Field(default=200, ge=1)
    relay_poll_seconds: float = Field(default=1.0, gt=0)
    relay_max_backoff_seconds: float = Field(default=60.0, gt=0)
    relay_partitions: int = Field(default=16, ge=1, le=4096)
    relay_lease_ttl_seconds: float = Field(default=8.0, ge=1.0, le=300.0)
    relay_heartbeat_seconds: float = Field(default=1.0, gt=0, le=60.0)
    republish_tenant_max_per_call: int = Field(default=1000, ge=1, le=5000)
    republish_tenant_per_minute: int = Field(default=5000, ge=1)
    consumer_prefetch: int = Field(default=20, ge=1)
    queue_type: Literal["classic", "quorum"] = "classic"
    quorum_delivery_limit: int = Field(default=5, ge=1)
    # Tenant queue and DLQ limits (the outbox is the buffer; docs/events.md)
    queue_message_ttl_ms: int = Field(default=86_400_000, ge=1)
    queue_max_length: int = Field(default=100_000, ge=1)
    dlq_max_length: int = Field(default=100_000, ge=1)
    dlq_max_length_bytes: int | None = Field(default=None, ge=1)

    trusted_proxy_ips: str = ""
    gateway_host: str = "127.0.0.1"
    gateway_port: int = Field(default=8000, ge=1, le=65535)
    gateway_upstreams: str = "http://127.0.0.1:8001,http://127.0.0.1:8002"
    gateway_internal_port: int | None = Field(default=None, ge=1, le=65535)
    gateway_dashboard_port: int | None = Field(default=None, ge=1, le=65535)
    gateway_rate_limit_per_minute: int = Field(default=100, ge=1)
    gateway_rate_limit_burst: int = Field(default=50, ge=1)
    gateway_health_interval_seconds: float = Field(default=5.0, gt=0)
    gateway_health_timeout_seconds: float = Field(default=2.0, gt=0)
    gateway_upstream_timeout_seconds: float = Field(default=30.0, gt=0)
    gateway_access_log: bool = False
    gateway_traefik_binary: str | None = None
    gateway_max_procs: int | None = Field(default=None, ge=1)

    event_partition_span_days: int = Field(default=7, ge=1, le=366)
    event_retention_days: int | None = Field(default=None, ge=1)
    event_archive_dir: str | None = None
    # History maintenance (`fintegrate maintain`, `events archive`; docs/events.md "History")
    event_delivery_expiry_days: int = Field(default=7, ge=1)
    maintenance_interval_seconds: float = Field(default=300.0, gt=0)
    maintenance_lock_timeout_ms: int = Field(default=100, ge=1, le=60_000)
    maintenance_lock_retry_seconds: float = Field(default=60.0, ge=0)

    # The worker's recovery of what the queue lost, and its per-customer cap (docs/events.md)
    worker_max_in_hand_per_customer: int = Field(default=4, ge=1)
    worker_recovery_interval_seconds: float = Field(default=60.0, gt=0)

    # Webhooks (SPEC 8): endpoints, secrets and the `webhooks deliver` process.
    webhook_encryption_key: str | None = None
    webhook_secret_grace_seconds: int = Field(default=86400, ge=0)
    webhook_allowed_cidrs: str = ""
    webhook_timeout_seconds: float = Field(default=15.0, gt=0, le=300)
    webhook_retry_schedule: str = "5,30,120,600,1800,3600,10800,21600"
    webhook_disable_after_hours: float = Field(default=120.0, gt=0)
    webhook_max_in_flight_per_endpoint: int = Field(default=4, ge=1, le=256)
    webhook_breaker_failures: int = Field(default=5, ge=1)
    webhook_breaker_pause_seconds: float = Field(default=30.0, gt=0)
    webhook_delivery_concurrency: int = Field(default=16, ge=1, le=256)
    webhook_poll_seconds: float = Field(default=0.5, gt=0)

    @field_validator("webhook_retry_schedule")
    @classmethod
    def _schedule_of_seconds(cls, value: str) -> str:
        try:
            delays = [float(part) for part in value.split(",")]
        except ValueError as exc:
            raise ValueError(
                "FINTEGRATE_WEBHOOK_RETRY_SCHEDULE must be comma-separated seconds"
            ) from exc
        if not delays or any(delay < 0 for delay in delays):
            raise ValueError("FINTEGRATE_WEBHOOK_RETRY_SCHEDULE needs one or more delays >= 0")
        return value

    @property
    def webhook_retry_delays(self) -> tuple[float, ...]:
        """FINTEGRATE_WEBHOOK_RETRY_SCHEDULE as seconds, one per retry."""
        return tuple(float(part) for part in self.webhook_retry_schedule.split(","))

    @model_validator(mode="after")
    def _retention_needs_an_archive_dir(self) -> Settings:
        if self.event_retention_days is not None and not self.event_archive_dir:
            raise ValueError(
                "FINTEGRATE_EVENT_RETENTION_DAYS needs FINTEGRATE_EVENT_ARCHIVE_DIR: "
                "events are archived to files before their partitions are dropped"
            )
        return self

    @model_validator(mode="after")
    def _heartbeat_within_lease(self) -> Settings:
        if self.relay_heartbeat_seconds * 3 > self.relay_lease_ttl_seconds:
            raise ValueError(
                "FINTEGRATE_RELAY_HEARTBEAT_SECONDS must be at most a third of "
                "FINTEGRATE_RELAY_LEASE_TTL_SECONDS, or leases lapse between renewals"
            )
        return self

    @field_validator("database_url")
    @classmethod
    def _on_shipped_driver(cls, value: str) -> str:
        return shipped_driver_url(value)

    # Clustered broker: one URL per node, comma-separated, same login and vhost.
    @field_validator("rabbitmq_url")
    @classmethod
    def _amqp_nodes(cls, value: str) -> str:
        return node_urls("FINTEGRATE_RABBITMQ_URL", value, ("amqp", "amqps"), same_path=True)

    @field_validator("rabbitmq_management_url")
    @classmethod
    def _management_nodes(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        return node_urls("FINTEGRATE_RABBITMQ_MANAGEMENT_URL", value, ("http", "https"))

    @model_validator(mode="after")
    def _refuse_placeholder_secrets(self) -> Settings:
        if self.environment == "development":
            return self
        for name in SECRET_FIELDS:
            value = getattr(self, name)
            if value is not None and value.strip().lower() in PLACEHOLDER_SECRETS:
                raise ValueError(
                    f"FINTEGRATE_{name.upper()} is a placeholder value; set a real secret "
                    f"(placeholders are only accepted with FINTEGRATE_ENVIRONMENT=development)"
                )
        if self.admin_api_key and len(self.admin_api_key) < MIN_ADMIN_KEY_LENGTH:
            raise ValueError(
                f"FINTEGRATE_ADMIN_API_KEY has {len(self.admin_api_key)} characters; outside "
                f"development it needs at least {MIN_ADMIN_KEY_LENGTH} (openssl rand -hex 24)"
            )
        return self


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings; tests call ``get_settings.cache_clear()`` to reload."""
    return Settings()


def load_settings(env_file: str | None = None, **overrides: Any) -> Settings:
    """Settings with explicit overrides (None values ignored) and an optional env file."""
    given = {key: value for key, value in overrides.items() if value is not None}
    if env_file is not None:
        return Settings(_env_file=env_file, **given)
    return Settings(**given)
