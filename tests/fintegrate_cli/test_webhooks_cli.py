"""`fintegrate webhooks …` against the live API, a loopback receiver and the real database."""

from __future__ import annotations

import gc
import json
from collections.abc import Iterator
from typing import Any

import pytest

from service.config import Settings
from tests.support.cli import RunCli, json_of, one_error_line
from tests.support.receiver import Receiver
from tests.support.webhooks import WEBHOOK_SETTINGS


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.updated(WEBHOOK_SETTINGS)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    started = Receiver().start()
    yield started
    started.stop()


@pytest.fixture
def as_tenant(run_cli: RunCli, tenant: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> RunCli:
    for name, value in WEBHOOK_SETTINGS.items():
        monkeypatch.setenv(f"FINTEGRATE_{name.upper()}", str(value))

    def invoke(*args: str) -> Any:
        return run_cli("--admin-key", "", "--api-key", tenant["api_key"], *args)

    return invoke


def test_endpoint_lifecycle_delivery_attempts_and_recover(
    as_tenant: RunCli, receiver: Receiver, tenant: dict[str, str]
) -> None:
    created = as_tenant("webhooks", "endpoints", "create", receiver.url, "--json")
    endpoint = json_of(created)
    assert endpoint["secret"].startswith("whsec_") and "shown only once" in created.stderr
    endpoint_id = endpoint["endpoint_id"]
    listed = json_of(as_tenant("webhooks", "endpoints", "list", "--json"))
    assert [item["endpoint_id"] for item in listed] == [endpoint_id]
    assert "secret" not in json_of(
        as_tenant("webhooks", "endpoints", "show", endpoint_id, "--json")
    )
    updated = json_of(
        as_tenant(
            "webhooks",
            "endpoints",
            "update",
            endpoint_id,
            "--event-type",
            "customer_creation",
            "--description",
            "crm",
            "--json",
        )
    )
    assert updated["event_types"] == ["customer_creation"] and updated["description"] == "crm"

    customer = json_of(as_tenant("customers", "create", "Ada", "--json"))
    waiting = json_of(as_tenant("events", "stats", "--consumer", tenant["name"], "--json"))
    assert waiting["webhooks"]["pending"] == 1 and waiting["webhooks"]["failed"] == 0
    gc.unfreeze()
    delivered = as_tenant("webhooks", "deliver", "--once")
    assert delivered.exit_code == 0, delivered.stderr
    assert gc.get_freeze_count() > 0  # set-up's objects are out of full collections
    assert "1 delivered" in delivered.stderr
    (item,) = receiver.wait_for(1)
    event_id = json.loads(item.body)["event_id"]
    assert json.loads(item.body)["customer_id"] == customer["customer_id"]
    shown = json_of(as_tenant("events", "show", event_id, "--json"))
    assert shown["deliver_status"] == "delivered"  # the webhook's receipt, no queue worker here
    assert [(w["endpoint_id"], w["status"]) for w in shown["webhooks"]] == [
        (endpoint_id, "delivered")
    ]
    done = json_of(as_tenant("events", "stats", "--consumer", tenant["name"], "--json"))
    assert done["webhooks"]["pending"] == 0

    tried = json_of(as_tenant("webhooks", "attempts", endpoint_id, "--json"))
    assert [a["status"] for a in tried] == ["succeeded"]
    assert (
        json_of(as_tenant("webhooks", "attempts", endpoint_id, "--status", "failed", "--json"))
        == []
    )
    queued = json_of(
        as_tenant(
            "webhooks", "recover", endpoint_id, "--since", "2000-01-01T00:00:00Z", "--yes", "--json"
        )
    )
    assert queued["queued"] == 1
    assert as_tenant("webhooks", "deliver", "--once").exit_code == 0
    assert len(receiver.wait_for(2)) == 2

    rotated = json_of(
        as_tenant("webhooks", "endpoints", "rotate-secret", endpoint_id, "--yes", "--json")
    )
    assert rotated["secret"] != endpoint["secret"]
    deleted = json_of(as_tenant("webhooks", "endpoints", "delete", endpoint_id, "--yes", "--json"))
    assert deleted["deleted"] is True
    missing = as_tenant("webhooks", "endpoints", "show", endpoint_id)
    assert missing.exit_code == 1
    assert "not found" in one_error_line(missing)


def test_update_needs_something_to_change(as_tenant: RunCli) -> None:
    result = as_tenant("webhooks", "endpoints", "update", "00000000-0000-4000-8000-000000000000")
    assert result.exit_code == 2
    assert "nothing to change" in one_error_line(result)


def test_a_refused_destination_is_one_error_line(as_tenant: RunCli) -> None:
    result = as_tenant("webhooks", "endpoints", "create", "http://10.0.0.1/hook")
    assert result.exit_code == 1
    assert "private" in one_error_line(result)
