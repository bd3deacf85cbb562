"""`fintegrate demo` when the API refuses its webhook endpoint: one note, the demo goes on."""

from __future__ import annotations

from service.config import Settings
from tests.support.cli import RunCli


def test_no_encryption_key_outside_development_skips_the_webhook_with_a_note(
    run_cli: RunCli, api_env: Settings
) -> None:
    assert api_env.environment == "test" and api_env.webhooks.encryption_key is None
    result = run_cli("demo", "--no-worker", "--customers", "1", "--timeout", "1")
    assert "webhooks skipped" in result.stderr
    assert "FINTEGRATE_WEBHOOK_ENCRYPTION_KEY" in result.stderr
    assert "Demo summary" in result.stdout
    assert result.exit_code == 3  # nothing confirmed: no relay and no worker here
