"""Settings: precedence (overrides > environment > .env > defaults) and placeholder refusal."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from service.config import FLAT_SETTINGS, Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]

# No FINTEGRATE_* variable and no ./.env of the developer leaks into these tests.
pytestmark = pytest.mark.usefixtures("clean_env")


def write_env(tmp_path: Path, **values: str) -> Path:
    path = tmp_path / "custom.env"
    path.write_text("".join(f"FINTEGRATE_{k.upper()}={v}\n" for k, v in values.items()))
    return path


@pytest.mark.parametrize("field", ["admin_api_key", "api_key", "webhook_encryption_key"])
@pytest.mark.parametrize("value", ["changeme", "change-me", " CHANGEME ", "placeholder"])
def test_placeholder_secret_refused_outside_development(
    monkeypatch: pytest.MonkeyPatch, field: str, value: str
) -> None:
    monkeypatch.setenv("FINTEGRATE_ENVIRONMENT", "production")
    monkeypatch.setenv(f"FINTEGRATE_{field.upper()}", value)
    with pytest.raises(ValidationError, match=f"FINTEGRATE_{field.upper()} is a placeholder"):
        load_settings()


def test_placeholder_secret_refused_in_test_environment_too() -> None:
    with pytest.raises(ValidationError, match="placeholder"):
        load_settings(environment="test", admin_api_key="changeme")


def test_placeholder_secret_accepted_in_development(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FINTEGRATE_ADMIN_API_KEY", "changeme")
    settings = load_settings()
    assert settings.environment == "development"
    assert settings.auth.admin_api_key == "changeme"


def test_real_secret_accepted_in_production(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FINTEGRATE_ENVIRONMENT", "production")
    monkeypatch.setenv("FINTEGRATE_ADMIN_API_KEY", "b1f0c6a7-long-random-operator-secret")
    assert load_settings().auth.admin_api_key == "b1f0c6a7-long-random-operator-secret"


@pytest.mark.parametrize("environment", ["test", "production"])
def test_a_short_admin_key_is_refused_outside_development(environment: str) -> None:
    with pytest.raises(ValidationError, match="at least 32"):
        load_settings(environment=environment, admin_api_key="x" * 31)
    assert load_settings(environment=environment, admin_api_key="x" * 32).auth.admin_api_key


def test_a_short_admin_key_is_accepted_in_development() -> None:
    assert load_settings(environment="development", admin_api_key="short").auth.admin_api_key


def test_env_file_overrides_defaults(tmp_path: Path) -> None:
    env_file = write_env(tmp_path, api_url="http://from-dotenv:8000", bcrypt_rounds="5")
    settings = load_settings(str(env_file))
    assert settings.api.url == "http://from-dotenv:8000"
    assert settings.auth.bcrypt_rounds == 5


def test_dotenv_in_working_directory_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("FINTEGRATE_API_URL=http://cwd-dotenv:8000\n")
    assert load_settings().api.url == "http://cwd-dotenv:8000"


def test_environment_overrides_env_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env_file = write_env(tmp_path, api_url="http://from-dotenv:8000")
    monkeypatch.setenv("FINTEGRATE_API_URL", "http://from-env:8000")
    assert load_settings(str(env_file)).api.url == "http://from-env:8000"


def test_explicit_overrides_beat_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    env_file = write_env(tmp_path, api_url="http://from-dotenv:8000")
    monkeypatch.setenv("FINTEGRATE_API_URL", "http://from-env:8000")
    settings = load_settings(str(env_file), api_url="http://from-flag:8000")
    assert settings.api.url == "http://from-flag:8000"


def test_none_overrides_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FINTEGRATE_API_URL", "http://from-env:8000")
    assert load_settings(api_url=None).api.url == "http://from-env:8000"


def test_defaults_match_the_specification() -> None:
    settings = load_settings()
    assert settings.ratelimit.api_key_per_minute == 50
    assert settings.ratelimit.api_key_burst == 500
    assert settings.auth.bcrypt_rounds == 12
    assert settings.http.max_body_bytes == 1024 * 1024


def test_out_of_range_value_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FINTEGRATE_BCRYPT_ROUNDS", "2")
    with pytest.raises(ValidationError, match="bcrypt_rounds"):
        load_settings()


def example_assignments() -> list[tuple[str, int]]:
    """(variable, line index) of every FINTEGRATE_ line in .env.example, commented or not."""
    lines = (ROOT / ".env.example").read_text().splitlines()
    pattern = re.compile(r"^#?\s*FINTEGRATE_([A-Z0-9_]+)=")
    return [(match[1], i) for i, line in enumerate(lines) if (match := pattern.match(line))]


def test_env_example_documents_every_setting_and_nothing_else() -> None:
    names = [name for name, _ in example_assignments()]
    assert len(names) == len(set(names)), "a variable appears twice"
    assert {name.lower() for name in names} == set(FLAT_SETTINGS)


def test_env_example_has_a_comment_above_each_variable() -> None:
    lines = (ROOT / ".env.example").read_text().splitlines()
    for name, index in example_assignments():
        above = lines[index - 1]
        assert above.startswith("# ") and "FINTEGRATE_" not in above.split("=")[0], name


def test_env_example_is_a_valid_development_configuration() -> None:
    settings = load_settings(str(ROOT / ".env.example"))
    assert settings.environment == "development"
    assert settings.auth.admin_api_key == "change-me"
    assert settings.api.key is None
    assert settings.database.url.endswith("@127.0.0.1:5432/fintegrate_db")


def test_env_example_placeholder_admin_key_is_refused_in_production(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FINTEGRATE_ENVIRONMENT", "production")
    with pytest.raises(ValidationError, match="FINTEGRATE_ADMIN_API_KEY is a placeholder"):
        load_settings(str(ROOT / ".env.example"))


def test_queue_bounds_and_worker_limits_default_to_the_seed_and_must_be_positive(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = load_settings()
    assert settings.queues.message_ttl_ms == 86_400_000
    assert settings.queues.max_length == 100_000
    for variable in (
        "FINTEGRATE_QUEUE_MESSAGE_TTL_MS",
        "FINTEGRATE_QUEUE_MAX_LENGTH",
        "FINTEGRATE_WORKER_MAX_IN_HAND_PER_CUSTOMER",
        "FINTEGRATE_WORKER_RECOVERY_INTERVAL_SECONDS",
    ):
        monkeypatch.setenv(variable, "0")
        with pytest.raises(ValidationError, match=variable.removeprefix("FINTEGRATE_").lower()):
            load_settings()
        monkeypatch.delenv(variable)


def test_webhook_retry_schedule_is_seconds() -> None:
    assert load_settings(webhook_retry_schedule="1,2.5").webhooks.retry_delays == (1.0, 2.5)
    with pytest.raises(ValidationError, match="FINTEGRATE_WEBHOOK_RETRY_SCHEDULE"):
        load_settings(webhook_retry_schedule="5,soon")
    with pytest.raises(ValidationError, match="FINTEGRATE_WEBHOOK_RETRY_SCHEDULE"):
        load_settings(webhook_retry_schedule="5,-1")


def test_every_setting_has_exactly_one_flat_name() -> None:
    groups = {name: info.annotation for name, info in Settings.model_fields.items()}
    places = {(None, "environment")} | {
        (group, field)
        for group, model in groups.items()
        if isinstance(model, type) and issubclass(model, BaseModel)
        for field in model.model_fields
    }
    assert len(set(FLAT_SETTINGS.values())) == len(FLAT_SETTINGS)
    assert set(FLAT_SETTINGS.values()) == places


def test_groups_are_read_by_component_and_frozen() -> None:
    settings = load_settings(relay_batch_size=5, gateway_port=9000)
    assert (settings.relay.batch_size, settings.gateway.port) == (5, 9000)
    with pytest.raises(ValidationError, match="frozen"):
        settings.relay.batch_size = 6  # type: ignore[misc]


def test_unknown_override_names_are_refused() -> None:
    with pytest.raises(TypeError, match="relay_batch"):
        load_settings(relay_batch=5)


def test_updated_replaces_only_the_named_settings() -> None:
    settings = load_settings(relay_poll_seconds=2.0)
    changed = settings.updated({"relay_batch_size": 7, "environment": "test"})
    assert (changed.relay.batch_size, changed.relay.poll_seconds) == (7, 2.0)
    assert changed.environment == "test"
    assert settings.relay.batch_size == 200


def test_a_copy_with_a_flat_name_is_refused_not_silently_ignored() -> None:
    settings = load_settings(read_env_file=False)
    with pytest.raises(TypeError, match="relay_batch_size"):
        settings.model_copy(update={"relay_batch_size": 5})
    assert settings.updated({"relay_batch_size": 5}).relay.batch_size == 5
