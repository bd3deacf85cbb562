"""`fintegrate customers ...` against the live API with a tenant key."""

from __future__ import annotations

from typing import Any

import pytest

from service.config import Settings
from tests.support.cli import RunCli, json_of, one_error_line


@pytest.fixture
def as_tenant(run_cli: RunCli, tenant: dict[str, str]) -> RunCli:
    """Run the CLI with the tenant's key (and no operator key)."""

    def invoke(*args: str) -> Any:
        return run_cli("--admin-key", "", "--api-key", tenant["api_key"], *args)

    return invoke


def test_create_show_and_list(as_tenant: RunCli) -> None:
    created = json_of(
        as_tenant("customers", "create", "Ada", "--email", "ada@example.com", "--json")
    )
    assert created["status"] == "active"
    assert created["email"] == "ada@example.com"
    suspended = json_of(as_tenant("customers", "create", "Bob", "--status", "suspended", "--json"))

    shown = json_of(as_tenant("customers", "show", created["customer_id"], "--json"))
    assert shown == created
    listed = json_of(as_tenant("customers", "list", "--json"))
    assert {c["customer_id"] for c in listed} == {created["customer_id"], suspended["customer_id"]}
    only = json_of(as_tenant("--json", "customers", "list", "--status", "suspended"))
    assert [c["name"] for c in only] == ["Bob"]


def test_paging_with_cursor_and_all(as_tenant: RunCli) -> None:
    names = {f"Customer {n}" for n in range(3)}
    for name in names:
        json_of(as_tenant("customers", "create", name, "--json"))
    first = as_tenant("customers", "list", "--limit", "2", "--json")
    assert len(json_of(first)) == 2
    assert "--cursor" in first.stderr
    everything = json_of(as_tenant("customers", "list", "--limit", "1", "--all", "--json"))
    assert {c["name"] for c in everything} == names


def test_table_for_people_shows_data_verbatim(as_tenant: RunCli) -> None:
    json_of(as_tenant("customers", "create", "Tabled", "--json"))
    json_of(as_tenant("customers", "create", "[/] [bold]x", "--json"))  # not Rich markup
    result = as_tenant("customers", "list")
    assert result.exit_code == 0, result.stderr
    assert "Tabled" in result.stdout
    assert "[/] [bold]x" in result.stdout


def test_another_tenants_customer_answers_like_a_missing_one(
    run_cli: RunCli, as_tenant: RunCli
) -> None:
    mine = json_of(as_tenant("customers", "create", "Mine", "--json"))
    other = json_of(run_cli("consumer", "create", "other_" + mine["customer_id"][:8], "--json"))
    stranger = run_cli("--api-key", other["api_key"], "customers", "show", mine["customer_id"])
    missing = run_cli(
        "--api-key", other["api_key"], "customers", "show", "00000000-0000-4000-8000-000000000000"
    )
    assert stranger.exit_code == missing.exit_code == 1
    assert one_error_line(stranger) == one_error_line(missing)


def test_bad_input_is_one_line(as_tenant: RunCli) -> None:
    bad_uuid = as_tenant("customers", "show", "not-a-uuid")
    assert bad_uuid.exit_code == 1
    assert "API error 422" in one_error_line(bad_uuid)
    bad_status = as_tenant("customers", "create", "X", "--status", "frozen")
    assert bad_status.exit_code == 2


def test_missing_and_wrong_tenant_key(run_cli: RunCli, api_env: Settings) -> None:
    missing = run_cli("customers", "list")
    assert missing.exit_code == 2
    assert "FINTEGRATE_API_KEY" in one_error_line(missing)
    wrong = run_cli("--api-key", "fk_nope_nope", "customers", "list")
    assert wrong.exit_code == 1
    assert "API error 401" in one_error_line(wrong)


def test_create_with_an_idempotency_key_is_safe_to_repeat(as_tenant: RunCli) -> None:
    args = ("customers", "create", "Ada", "--idempotency-key", "cli-retry-1", "--json")
    first = json_of(as_tenant(*args))
    again = json_of(as_tenant(*args))

    assert again == first
    assert [c["customer_id"] for c in json_of(as_tenant("customers", "list", "--json"))] == [
        first["customer_id"]
    ]
    conflict = as_tenant("customers", "create", "Bob", "--idempotency-key", "cli-retry-1")
    assert conflict.exit_code != 0
    assert "different request body" in one_error_line(conflict)


def test_erase_previews_confirms_and_erases(as_tenant: RunCli) -> None:
    created = json_of(
        as_tenant("customers", "create", "Erin", "--email", "erin@example.com", "--json")
    )
    customer_id = created["customer_id"]
    preview = as_tenant("customers", "erase", customer_id, "--dry-run")
    assert preview.exit_code == 0 and "Erin" in preview.stdout
    refused = as_tenant("customers", "erase", customer_id)
    assert refused.exit_code == 2 and "--yes" in refused.stderr
    erased = json_of(as_tenant("customers", "erase", customer_id, "--yes", "--json"))
    assert erased["already_erased"] is False and erased["events_redacted"] == 1
    shown = json_of(as_tenant("customers", "show", customer_id, "--json"))
    assert shown["email"] is None and shown["name"] == "[erased]"
