"""`fintegrate keys ...` against the live API: rotation, listing, confirmed revocation."""

from __future__ import annotations

from tests.support.cli import RunCli, json_of, one_error_line


def customers_as(run_cli: RunCli, api_key: str) -> int:
    """Exit code of a tenant call made with ``api_key``."""
    return run_cli("--api-key", api_key, "customers", "list", "--json").exit_code


def test_operator_rotation_replaces_the_key(run_cli: RunCli, tenant: dict[str, str]) -> None:
    result = run_cli("keys", "rotate", tenant["name"], "--json")
    rotated = json_of(result)
    assert "shown only once" in result.stderr
    assert rotated["api_key"] != tenant["api_key"]
    assert rotated["is_active"] is True
    assert customers_as(run_cli, tenant["api_key"]) == 1
    assert customers_as(run_cli, rotated["api_key"]) == 0


def test_tenant_rotates_its_own_key(run_cli: RunCli, tenant: dict[str, str]) -> None:
    result = run_cli(
        "--admin-key",
        "",
        "--api-key",
        tenant["api_key"],
        "keys",
        "rotate",
        tenant["name"],
        "--json",
    )
    rotated = json_of(result)
    assert "update FINTEGRATE_API_KEY" in result.stderr
    assert customers_as(run_cli, rotated["api_key"]) == 0


def test_list_shows_every_key_without_secrets(run_cli: RunCli, tenant: dict[str, str]) -> None:
    json_of(run_cli("keys", "rotate", tenant["consumer_id"], "--json"))
    keys = json_of(run_cli("keys", "list", tenant["name"], "--json"))
    assert len(keys) == 2
    assert sorted(key["is_active"] for key in keys) == [False, True]
    assert all("api_key" not in key and "key_hash" not in key for key in keys)
    table = run_cli("keys", "list", tenant["name"])
    assert table.exit_code == 0
    assert "key_prefix" in table.stdout


def test_revoke_previews_confirms_and_refuses_the_key(
    run_cli: RunCli, tenant: dict[str, str]
) -> None:
    name, key_id = tenant["name"], tenant["key_id"]
    preview = json_of(run_cli("keys", "revoke", name, key_id, "--dry-run", "--json"))
    assert preview["dry_run"] is True
    assert preview["is_active"] is True
    assert customers_as(run_cli, tenant["api_key"]) == 0

    unconfirmed = run_cli("keys", "revoke", name, key_id)
    assert unconfirmed.exit_code == 2
    assert "pass --yes" in one_error_line(unconfirmed)
    assert customers_as(run_cli, tenant["api_key"]) == 0

    revoked = json_of(run_cli("keys", "revoke", name, key_id, "--yes", "--json"))
    assert revoked["is_active"] is False
    assert revoked["revoked_at"]
    assert customers_as(run_cli, tenant["api_key"]) == 1


def test_unknown_key_is_one_line(run_cli: RunCli, tenant: dict[str, str]) -> None:
    result = run_cli("keys", "revoke", tenant["name"], "00000000-0000-4000-8000-000000000000")
    assert result.exit_code == 1
    assert "has no key" in one_error_line(result)


def test_keys_list_needs_the_operator_key(run_cli: RunCli, tenant: dict[str, str]) -> None:
    result = run_cli("--admin-key", "", "--api-key", tenant["api_key"], "keys", "list", "x")
    assert result.exit_code == 2
    assert "FINTEGRATE_ADMIN_API_KEY" in one_error_line(result)
