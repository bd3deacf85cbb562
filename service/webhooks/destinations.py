"""Where webhooks may go (SPEC 8): the URL rule and the address rule, at save and on connect.

- URL: ``https://`` only; ``http://`` too when ``FINTEGRATE_ENVIRONMENT=development``. No
  credentials in the URL, a host required.
- Address: loopback, private, link-local, multicast, unspecified and reserved addresses are
  refused unless inside ``FINTEGRATE_WEBHOOK_ALLOWED_CIDRS``. A host name is judged by every
  DNS answer: one refused answer refuses the host (no rebinding through a mixed answer).
- On connect, ``GuardedBackend`` resolves the host itself, checks every answer and connects
  to a checked address, so the address judged is the address used (TLS still verifies the
  host name: httpcore passes it to the handshake separately).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpcore

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], list[str]]


class DestinationRefused(ValueError):
    """The URL or one of its addresses is not an allowed webhook destination."""


@dataclass(frozen=True)
class DestinationPolicy:
    """The rule of SPEC 8: whether plain http is allowed and which CIDRs are exempt."""

    allow_http: bool = False
    allowed_networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def from_settings(cls, environment: str, allowed_cidrs: str) -> DestinationPolicy:
        return cls(environment == "development", parse_cidrs(allowed_cidrs))


def parse_cidrs(value: str) -> tuple[IPNetwork, ...]:
    """``"127.0.0.0/8, ::1/128"`` as networks; ValueError naming a bad entry."""
    networks = []
    for part in (item.strip() for item in value.split(",")):
        if not part:
            continue
        try:
            networks.append(ipaddress.ip_network(part, strict=False))
        except ValueError as exc:
            raise ValueError(f"FINTEGRATE_WEBHOOK_ALLOWED_CIDRS: {part!r} is not a CIDR") from exc
    return tuple(networks)


def check_url(url: str, policy: DestinationPolicy) -> tuple[str, int]:
    """The URL's host and port when its form is allowed; DestinationRefused otherwise."""
    parts = urlsplit(url)
    allowed = ("https", "http") if policy.allow_http else ("https",)
    if parts.scheme not in allowed:
        raise DestinationRefused(
            "url must start with https:// (http:// only with FINTEGRATE_ENVIRONMENT=development)"
        )
    if parts.username is not None or parts.password is not None:
        raise DestinationRefused("url must not carry credentials (user:password@)")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise DestinationRefused("url has an invalid port") from exc
    if not parts.hostname:
        raise DestinationRefused("url needs a host")
    return parts.hostname, port


def check_address(address: str, policy: DestinationPolicy) -> IPAddress:
    """``address`` when it is public or inside an allowed CIDR; DestinationRefused otherwise."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if any(ip in network for network in policy.allowed_networks):
        return ip
    kind = refused_kind(ip)
    if kind is not None:
        raise DestinationRefused(
            f"{ip} is a {kind} address; webhooks go only to public addresses "
            f"(or inside FINTEGRATE_WEBHOOK_ALLOWED_CIDRS)"
        )
    return ip


def refused_kind(ip: IPAddress) -> str | None:
    """Why ``ip`` is not public (loopback, private, …), or None for a public address."""
    for kind, flag in (
        ("loopback", ip.is_loopback),
        ("unspecified", ip.is_unspecified),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("private", ip.is_private),
        ("reserved", ip.is_reserved),
        ("non-global", not ip.is_global),
    ):
        if flag:
            return kind
    return None


def system_resolver(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (A and AAAA), as text."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def resolve_allowed(
    host: str, port: int, policy: DestinationPolicy, resolver: Resolver = system_resolver
) -> list[str]:
    """The addresses of ``host``, every one checked; DestinationRefused when one is refused."""
    try:
        addresses = [str(ipaddress.ip_address(host.strip("[]")))]
    except ValueError:
        try:
            addresses = resolver(host, port)
        except OSError as exc:
            raise DestinationRefused(f"{host} does not resolve: {exc}") from exc
    if not addresses:
        raise DestinationRefused(f"{host} has no address")
    for address in addresses:
        check_address(address, policy)
    return addresses


def check_destination(
    url: str, policy: DestinationPolicy, resolver: Resolver = system_resolver
) -> None:
    """At save: the URL's form, and its host's addresses when it resolves now.

    A host that does not resolve yet is accepted (DNS may come later); every connection is
    checked again by ``GuardedBackend``.
    """
    host, port = check_url(url, policy)
    try:
        resolve_allowed(host, port, policy, resolver)
    except DestinationRefused as exc:
        if "does not resolve" not in str(exc):
            raise


class GuardedBackend(httpcore.NetworkBackend):
    """httpcore's sync backend, connecting only to addresses the policy allows."""

    def __init__(self, policy: DestinationPolicy, resolver: Resolver = system_resolver):
        self.policy = policy
        self.resolver = resolver
        self._backend = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        try:
            addresses = resolve_allowed(host, port, self.policy, self.resolver)
        except DestinationRefused as exc:
            raise httpcore.ConnectError(f"destination refused: {exc}") from exc
        return self._connect_first(addresses, port, timeout, local_address, socket_options)

    def _connect_first(
        self,
        addresses: Sequence[str],
        port: int,
        timeout: float | None,
        local_address: str | None,
        socket_options: Iterable[Any] | None,
    ) -> httpcore.NetworkStream:
        last: Exception | None = None
        for address in addresses:
            try:
                return self._backend.connect_tcp(
                    address, port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        assert last is not None
        raise last

    def connect_unix_socket(self, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("webhooks never connect to unix sockets")

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)
