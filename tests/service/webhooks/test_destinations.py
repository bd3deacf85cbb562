"""The destination policy (SPEC 8) on the resolver and the check: no connection is made."""

from __future__ import annotations

import httpcore
import pytest

from service.webhooks.destinations import (
    DestinationPolicy,
    DestinationRefused,
    GuardedBackend,
    check_address,
    check_destination,
    check_url,
    parse_cidrs,
    resolve_allowed,
)

STRICT = DestinationPolicy()
DEVELOPMENT = DestinationPolicy(allow_http=True)
LOOPBACK_ALLOWED = DestinationPolicy(True, parse_cidrs("127.0.0.0/8"))


def answers(*addresses: str):  # type: ignore[no-untyped-def]
    """A resolver that answers ``addresses`` for any host (no DNS is asked)."""

    def resolve(host: str, port: int) -> list[str]:
        return list(addresses)

    return resolve


def unresolvable(host: str, port: int) -> list[str]:
    raise OSError("Name or service not known")


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.8.9.10",
        "::1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "fe80::1",
        "224.0.0.1",
        "ff02::1",
        "0.0.0.0",
        "::",
        "100.64.0.1",
        "fc00::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
    ],
)
def test_non_public_addresses_are_refused(address: str) -> None:
    with pytest.raises(DestinationRefused):
        check_address(address, STRICT)


@pytest.mark.parametrize("address", ["93.184.216.34", "2606:4700:4700::1111", "8.8.8.8"])
def test_public_addresses_pass(address: str) -> None:
    assert str(check_address(address, STRICT))


def test_allowed_cidrs_exempt_only_their_range() -> None:
    assert str(check_address("127.0.0.1", LOOPBACK_ALLOWED)) == "127.0.0.1"
    with pytest.raises(DestinationRefused, match="private"):
        check_address("10.0.0.1", LOOPBACK_ALLOWED)


def test_https_only_outside_development() -> None:
    assert check_url("https://hooks.example.com/x", STRICT) == ("hooks.example.com", 443)
    with pytest.raises(DestinationRefused, match="https"):
        check_url("http://hooks.example.com/x", STRICT)
    assert check_url("http://hooks.example.com:8080/x", DEVELOPMENT) == ("hooks.example.com", 8080)
    for bad in ("ftp://x.example.com", "https://user:pw@x.example.com/", "https:///nohost"):
        with pytest.raises(DestinationRefused):
            check_url(bad, DEVELOPMENT)


def test_every_dns_answer_is_checked() -> None:
    assert resolve_allowed("a.example", 443, STRICT, answers("93.184.216.34")) == ["93.184.216.34"]
    with pytest.raises(DestinationRefused, match="loopback"):
        resolve_allowed("a.example", 443, STRICT, answers("93.184.216.34", "127.0.0.1"))


def test_save_refuses_a_host_resolving_to_a_private_address() -> None:
    with pytest.raises(DestinationRefused, match="private"):
        check_destination("https://internal.example/x", STRICT, answers("10.0.0.5"))
    with pytest.raises(DestinationRefused, match="loopback"):
        check_destination("https://127.0.0.1/x", STRICT, unresolvable)
    check_destination("https://not-yet.example/x", STRICT, unresolvable)  # checked on connect


def test_parse_cidrs_names_a_bad_entry() -> None:
    assert len(parse_cidrs("127.0.0.0/8, ::1/128,")) == 2
    with pytest.raises(ValueError, match="nope"):
        parse_cidrs("127.0.0.0/8,nope")


def test_connect_is_refused_before_any_socket_for_a_private_answer() -> None:
    backend = GuardedBackend(STRICT, answers("192.168.0.10"))
    with pytest.raises(httpcore.ConnectError, match="destination refused"):
        backend.connect_tcp("rebinding.example", 443, timeout=1)
    with pytest.raises(httpcore.ConnectError, match="loopback"):
        GuardedBackend(STRICT).connect_tcp("127.0.0.1", 9, timeout=1)
