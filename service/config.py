"""Settings shared by the service, the relay, the worker and the CLI, grouped per component.

Each component reads one small frozen group (``settings.relay``, ``settings.gateway``, …) and
is handed only that group. The environment stays flat: ``FLAT_SETTINGS`` maps each setting's
flat name (its variable without the ``FINTEGRATE_`` prefix) to its group and field, and drives
the environment names, the ``.env`` file, ``load_settings`` overrides and ``config show``.
Precedence: explicit overrides (CLI flags) > environment > ``.env`` > defaults.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, cast
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PLACEHOLDER_SECRETS = frozenset(
    {"changeme", "change-me", "change_me", "secret", "admin", "password", "placeholder", "xxx"}
)
ENV_PREFIX = "FINTEGRATE_"
ENV_FILE = ".env"
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


class _Group(BaseModel):
    """One component's settings: immutable, and nothing a component does not declare."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class DatabaseSettings(_Group):
    """PostgreSQL: every process that opens an engine or a pool."""

    url: str = "postgresql+psycopg2://fintegrate_user:fintegrate_pass@127.0.0.1:5432/fintegrate_db"
    pool_size: int = Field(default=10, ge=1)
    statement_timeout_ms: int = Field(default=5000, ge=100)

    @field_validator("url")
    @classmethod
    def _on_shipped_driver(cls, value: str) -> str:
        return shipped_driver_url(value)


class BrokerSettings(_Group):
    """RabbitMQ. Clustered: one URL per node, comma-separated, same login and vhost."""

    url: str = "amqp://fintegrate_user:fintegrate_pass@127.0.0.1:5672/fintegrate"
    management_url: str | None = None

    @field_validator("url")
    @classmethod
    def _amqp_nodes(cls, value: str) -> str:
        return node_urls("FINTEGRATE_RABBITMQ_URL", value, ("amqp", "amqps"), same_path=True)

    @field_validator("management_url")
    @classmethod
    def _management_nodes(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        return node_urls("FINTEGRATE_RABBITMQ_MANAGEMENT_URL", value, ("http", "https"))


class QueueSettings(_Group):
    """Tenant queues and DLQs (the outbox is the buffer; docs/events.md)."""

    type: Literal["classic", "quorum"] = "classic"
    quorum_delivery_limit: int = Field(default=5, ge=1)
    message_ttl_ms: int = Field(default=86_400_000, ge=1)
    max_length: int = Field(default=100_000, ge=1)
    dlq_max_length: int = Field(default=100_000, ge=1)
    dlq_max_length_bytes: int | None = Field(default=None, ge=1)


class RedisSettings(_Group):
    """Redis for rate limits and the failed-auth throttle; the API runs without it."""

    url: str | None = "redis://127.0.0.1:6379/0"
    timeout_seconds: float = Field(default=0.05, gt=0)
    retry_seconds: float = Field(default=5.0, gt=0)
    # The breaker opens after this many failed round trips in a row, not on one late reply.
    breaker_failures: int = Field(default=3, ge=1)


class RateLimitSettings(_Group):
    """The per-API-key budget (SPEC 7)."""

    api_key_per_minute: int = Field(default=50, ge=1)
    api_key_burst: int = Field(default=500, ge=1)


class AuthSettings(_Group):
    """API keys and the operator key: hashing, caching, throttling failed attempts."""

    admin_api_key: str | None = None
    bcrypt_rounds: int = Field(default=12, ge=4, le=16)
    cache_ttl_seconds: float = Field(default=5.0, ge=0)
    failed_limit: int = Field(default=10, ge=1)
    failed_window_seconds: int = Field(default=60, ge=1)
    bcrypt_concurrency: int = Field(default=2, ge=1)


class HttpSettings(_Group):
    """The API's edge: body limit and the proxies whose forwarded address is believed."""

    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    trusted_proxy_ips: str = ""


class ApiClientSettings(_Group):
    """How the CLI and the tenant worker reach the API."""

    url: str = "http://127.0.0.1:8000"
    key: str | None = None


class GatewaySettings(_Group):
    """`fintegrate gateway`: Traefik in front of the API instances (docs/gateway.md)."""

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    upstreams: str = "http://127.0.0.1:8001,http://127.0.0.1:8002"
    internal_port: int | None = Field(default=None, ge=1, le=65535)
    dashboard_port: int | None = Field(default=None, ge=1, le=65535)
    rate_limit_per_minute: int = Field(default=100, ge=1)
    rate_limit_burst: int = Field(default=50, ge=1)
    health_interval_seconds: float = Field(default=5.0, gt=0)
    health_timeout_seconds: float = Field(default=2.0, gt=0)
    upstream_timeout_seconds: float = Field(default=30.0, gt=0)
    access_log: bool = False
    traefik_binary: str | None = None
    max_procs: int | None = Field(default=None, ge=1)


class RelaySettings(_Group):
    """`fintegrate relay`: the outbox publisher and its partition leases."""

    batch_size: int = Field(default=200, ge=1)
    poll_seconds: float = Field(default=1.0, gt=0)
    max_backoff_seconds: float = Field(default=60.0, gt=0)
    partitions: int = Field(default=16, ge=1, le=4096)
    lease_ttl_seconds: float = Field(default=8.0, ge=1.0, le=300.0)
    heartbeat_seconds: float = Field(default=1.0, gt=0, le=60.0)

    @model_validator(mode="after")
    def _heartbeat_within_lease(self) -> RelaySettings:
        if self.heartbeat_seconds * 3 > self.lease_ttl_seconds:
            raise ValueError(
                "FINTEGRATE_RELAY_HEARTBEAT_SECONDS must be at most a third of "
                "FINTEGRATE_RELAY_LEASE_TTL_SECONDS, or leases lapse between renewals"
            )
        return self


class RepublishSettings(_Group):
    """A tenant's resend and redeliver budget."""

    tenant_max_per_call: int = Field(default=1000, ge=1, le=5000)
    tenant_per_minute: int = Field(default=5000, ge=1)


class WorkerSettings(_Group):
    """The tenant worker (`fintegrate consume`): prefetch, recovery, per-customer cap."""

    prefetch: int = Field(default=20, ge=1)
    max_in_hand_per_customer: int = Field(default=4, ge=1)
    recovery_interval_seconds: float = Field(default=60.0, gt=0)


class HistorySettings(_Group):
    """Event history: partitions, archive, expiry and `fintegrate maintain` (docs/events.md)."""

    partition_span_days: int = Field(default=7, ge=1, le=366)
    retention_days: int | None = Field(default=None, ge=1)
    archive_dir: str | None = None
    delivery_expiry_days: int = Field(default=7, ge=1)
    maintenance_interval_seconds: float = Field(default=300.0, gt=0)
    lock_timeout_ms: int = Field(default=100, ge=1, le=60_000)
    lock_retry_seconds: float = Field(default=60.0, ge=0)

    @model_validator(mode="after")
    def _retention_needs_an_archive_dir(self) -> HistorySettings:
        if self.retention_days is not None and not self.archive_dir:
            raise ValueError(
                "FINTEGRATE_EVENT_RETENTION_DAYS needs FINTEGRATE_EVENT_ARCHIVE_DIR: "
                "events are archived to files before their partitions are dropped"
            )
        return self


class WebhookSettings(_Group):
    """Webhooks (SPEC 8): endpoints, secrets and the `webhooks deliver` process."""

    encryption_key: str | None = None
    secret_grace_seconds: int = Field(default=86400, ge=0)
    allowed_cidrs: str = ""
    timeout_seconds: float = Field(default=15.0, gt=0, le=300)
    retry_schedule: str = "5,30,120,600,1800,3600,10800,21600"
    disable_after_hours: float = Field(default=120.0, gt=0)
    max_in_flight_per_endpoint: int = Field(default=4, ge=1, le=256)
    breaker_failures: int = Field(default=5, ge=1)
    breaker_pause_seconds: float = Field(default=30.0, gt=0)
    delivery_concurrency: int = Field(default=16, ge=1, le=256)
    poll_seconds: float = Field(default=0.5, gt=0)

    @field_validator("retry_schedule")
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
    def retry_delays(self) -> tuple[float, ...]:
        """FINTEGRATE_WEBHOOK_RETRY_SCHEDULE as seconds, one per retry."""
        return tuple(float(part) for part in self.retry_schedule.split(","))


class ObservabilitySettings(_Group):
    """FastAPI's native OpenTelemetry instrumentation (tracing itself reads OTEL_*)."""

    opentelemetry: bool = False


class Settings(_Group):
    """Every tunable of Fintegrate, one group per component; see ``.env.example``."""

    environment: Literal["development", "test", "production"] = "development"
    database: DatabaseSettings = DatabaseSettings()
    broker: BrokerSettings = BrokerSettings()
    queues: QueueSettings = QueueSettings()
    redis: RedisSettings = RedisSettings()
    ratelimit: RateLimitSettings = RateLimitSettings()
    auth: AuthSettings = AuthSettings()
    http: HttpSettings = HttpSettings()
    api: ApiClientSettings = ApiClientSettings()
    gateway: GatewaySettings = GatewaySettings()
    relay: RelaySettings = RelaySettings()
    republish: RepublishSettings = RepublishSettings()
    worker: WorkerSettings = WorkerSettings()
    history: HistorySettings = HistorySettings()
    webhooks: WebhookSettings = WebhookSettings()
    observability: ObservabilitySettings = ObservabilitySettings()

    @model_validator(mode="after")
    def _refuse_placeholder_secrets(self) -> Settings:
        if self.environment == "development":
            return self
        for name in SECRET_FIELDS:
            value = self.flat_value(name)
            if value is not None and value.strip().lower() in PLACEHOLDER_SECRETS:
                raise ValueError(
                    f"{env_name(name)} is a placeholder value; set a real secret "
                    f"(placeholders are only accepted with FINTEGRATE_ENVIRONMENT=development)"
                )
        admin_key = self.auth.admin_api_key
        if admin_key and len(admin_key) < MIN_ADMIN_KEY_LENGTH:
            raise ValueError(
                f"FINTEGRATE_ADMIN_API_KEY has {len(admin_key)} characters; outside "
                f"development it needs at least {MIN_ADMIN_KEY_LENGTH} (openssl rand -hex 24)"
            )
        return self

    def flat_value(self, setting: str) -> Any:
        """The value of one setting by its flat name (``relay_batch_size``)."""
        group, field = FLAT_SETTINGS[setting]
        return getattr(self if group is None else getattr(self, group), field)

    def flat_values(self) -> dict[str, Any]:
        """Every setting by its flat name, as the environment would spell it."""
        return {setting: self.flat_value(setting) for setting in FLAT_SETTINGS}

    def environment_variables(self) -> dict[str, str]:
        """The ``FINTEGRATE_*`` variables that rebuild these settings in a child process."""
        values = self.flat_values()
        return {env_name(name): str(value) for name, value in values.items() if value is not None}

    def updated(self, changes: Mapping[str, Any]) -> Settings:
        """A copy with settings replaced by flat name, unvalidated like ``model_copy``."""
        update: dict[str, Any] = {}
        for name, value in grouped(changes).items():
            current = getattr(self, name)
            update[name] = (
                current.model_copy(update=value) if isinstance(current, _Group) else value
            )
        return self.model_copy(update=update)

    def model_copy(
        self, *, update: Mapping[str, Any] | None = None, deep: bool = False
    ) -> Settings:
        """pydantic's copy, refusing names that are not fields (a flat name such as
        ``relay_batch_size`` would otherwise be set on the copy and read by nothing)."""
        unknown = sorted(set(update or {}) - set(type(self).model_fields))
        if unknown:
            raise TypeError(f"not a settings group: {', '.join(unknown)} (use updated())")
        return super().model_copy(update=update, deep=deep)


# Each setting's flat name, which is its environment variable without FINTEGRATE_, and where
# it lives: (group, field), group None for a field of Settings itself. The one place that
# ties the grouped settings to the environment, `.env` files, overrides and `config show`.
FLAT_SETTINGS: dict[str, tuple[str | None, str]] = {
    "environment": (None, "environment"),
    "opentelemetry": ("observability", "opentelemetry"),
    "database_url": ("database", "url"),
    "db_pool_size": ("database", "pool_size"),
    "db_statement_timeout_ms": ("database", "statement_timeout_ms"),
    "rabbitmq_url": ("broker", "url"),
    "rabbitmq_management_url": ("broker", "management_url"),
    "redis_url": ("redis", "url"),
    "redis_timeout_seconds": ("redis", "timeout_seconds"),
    "redis_retry_seconds": ("redis", "retry_seconds"),
    "redis_breaker_failures": ("redis", "breaker_failures"),
    "api_url": ("api", "url"),
    "api_key": ("api", "key"),
    "admin_api_key": ("auth", "admin_api_key"),
    "bcrypt_rounds": ("auth", "bcrypt_rounds"),
    "auth_cache_ttl_seconds": ("auth", "cache_ttl_seconds"),
    "failed_auth_limit": ("auth", "failed_limit"),
    "failed_auth_window_seconds": ("auth", "failed_window_seconds"),
    "auth_bcrypt_concurrency": ("auth", "bcrypt_concurrency"),
    "rate_limit_api_key_per_minute": ("ratelimit", "api_key_per_minute"),
    "rate_limit_api_key_burst": ("ratelimit", "api_key_burst"),
    "max_body_bytes": ("http", "max_body_bytes"),
    "trusted_proxy_ips": ("http", "trusted_proxy_ips"),
    "relay_batch_size": ("relay", "batch_size"),
    "relay_poll_seconds": ("relay", "poll_seconds"),
    "relay_max_backoff_seconds": ("relay", "max_backoff_seconds"),
    "relay_partitions": ("relay", "partitions"),
    "relay_lease_ttl_seconds": ("relay", "lease_ttl_seconds"),
    "relay_heartbeat_seconds": ("relay", "heartbeat_seconds"),
    "republish_tenant_max_per_call": ("republish", "tenant_max_per_call"),
    "republish_tenant_per_minute": ("republish", "tenant_per_minute"),
    "consumer_prefetch": ("worker", "prefetch"),
    "worker_max_in_hand_per_customer": ("worker", "max_in_hand_per_customer"),
    "worker_recovery_interval_seconds": ("worker", "recovery_interval_seconds"),
    "queue_type": ("queues", "type"),
    "quorum_delivery_limit": ("queues", "quorum_delivery_limit"),
    "queue_message_ttl_ms": ("queues", "message_ttl_ms"),
    "queue_max_length": ("queues", "max_length"),
    "dlq_max_length": ("queues", "dlq_max_length"),
    "dlq_max_length_bytes": ("queues", "dlq_max_length_bytes"),
    "gateway_host": ("gateway", "host"),
    "gateway_port": ("gateway", "port"),
    "gateway_upstreams": ("gateway", "upstreams"),
    "gateway_internal_port": ("gateway", "internal_port"),
    "gateway_dashboard_port": ("gateway", "dashboard_port"),
    "gateway_rate_limit_per_minute": ("gateway", "rate_limit_per_minute"),
    "gateway_rate_limit_burst": ("gateway", "rate_limit_burst"),
    "gateway_health_interval_seconds": ("gateway", "health_interval_seconds"),
    "gateway_health_timeout_seconds": ("gateway", "health_timeout_seconds"),
    "gateway_upstream_timeout_seconds": ("gateway", "upstream_timeout_seconds"),
    "gateway_access_log": ("gateway", "access_log"),
    "gateway_traefik_binary": ("gateway", "traefik_binary"),
    "gateway_max_procs": ("gateway", "max_procs"),
    "event_partition_span_days": ("history", "partition_span_days"),
    "event_retention_days": ("history", "retention_days"),
    "event_archive_dir": ("history", "archive_dir"),
    "event_delivery_expiry_days": ("history", "delivery_expiry_days"),
    "maintenance_interval_seconds": ("history", "maintenance_interval_seconds"),
    "maintenance_lock_timeout_ms": ("history", "lock_timeout_ms"),
    "maintenance_lock_retry_seconds": ("history", "lock_retry_seconds"),
    "webhook_encryption_key": ("webhooks", "encryption_key"),
    "webhook_secret_grace_seconds": ("webhooks", "secret_grace_seconds"),
    "webhook_allowed_cidrs": ("webhooks", "allowed_cidrs"),
    "webhook_timeout_seconds": ("webhooks", "timeout_seconds"),
    "webhook_retry_schedule": ("webhooks", "retry_schedule"),
    "webhook_disable_after_hours": ("webhooks", "disable_after_hours"),
    "webhook_max_in_flight_per_endpoint": ("webhooks", "max_in_flight_per_endpoint"),
    "webhook_breaker_failures": ("webhooks", "breaker_failures"),
    "webhook_breaker_pause_seconds": ("webhooks", "breaker_pause_seconds"),
    "webhook_delivery_concurrency": ("webhooks", "delivery_concurrency"),
    "webhook_poll_seconds": ("webhooks", "poll_seconds"),
}


def env_name(setting: str) -> str:
    """The environment variable of a flat setting name: ``FINTEGRATE_RELAY_BATCH_SIZE``."""
    return f"{ENV_PREFIX}{setting.upper()}"


class _FlatEnvironmentBase(BaseSettings):
    """Reads the flat variables; its fields are generated from ``FLAT_SETTINGS`` below."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=ENV_FILE, env_file_encoding="utf-8", extra="ignore"
    )


def _flat_fields() -> dict[str, Any]:
    """Each flat setting with its group field's type, default and bounds.

    Types and bounds are checked here, so an out-of-range value is reported under the
    name the operator set (``bcrypt_rounds``); the groups' own rules run when they are built.
    """
    fields: dict[str, Any] = {}
    for setting, (group, field) in FLAT_SETTINGS.items():
        owner = Settings if group is None else Settings.model_fields[group].annotation
        info = cast(type[BaseModel], owner).model_fields[field]
        fields[setting] = (info.annotation, info)
    return fields


_FlatEnvironment = create_model("FlatEnvironment", __base__=_FlatEnvironmentBase, **_flat_fields())


def grouped(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Flat setting values as the nested input of ``Settings``."""
    nested: dict[str, Any] = {}
    for setting, value in flat.items():
        group, field = FLAT_SETTINGS[setting]
        if group is None:
            nested[field] = value
        else:
            nested.setdefault(group, {})[field] = value
    return nested


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings; tests call ``get_settings.cache_clear()`` to reload."""
    return load_settings()


def load_settings(
    env_file: str | Path | None = None, *, read_env_file: bool = True, **overrides: Any
) -> Settings:
    """Settings from the environment and ``.env`` (or ``env_file``) under flat-named overrides.

    Overrides use the flat names (``relay_batch_size=5``); None values are ignored.
    ``read_env_file=False`` reads no file at all (the environment and overrides only).
    """
    unknown = set(overrides) - set(FLAT_SETTINGS)
    if unknown:
        raise TypeError(f"unknown settings: {', '.join(sorted(unknown))}")
    given: dict[str, Any] = {key: value for key, value in overrides.items() if value is not None}
    if not read_env_file:
        given["_env_file"] = None
    elif env_file is not None:
        given["_env_file"] = env_file
    flat = _FlatEnvironment(**given)
    return Settings.model_validate(grouped(flat.model_dump()))
