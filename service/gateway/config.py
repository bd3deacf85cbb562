"""Traefik's static and dynamic configuration, from one plan, for the CLI and for compose.

`fintegrate gateway` and `compose/traefik/*.yml` render the same two functions; only the
addresses differ (`GatewayPlan`). The design, in short (docs/gateway.md has the why):

- every public router calls the `ip-budget` forwardAuth middleware, which asks the loopback
  `edge-budget` entry point; its single router holds the one `rateLimit`, so a client has
  one budget across every route, and the `errors` middleware there sees only the gateway's
  own 429 (never the API's per-key 429, which passes through untouched);
- `edge-errors` maps 502/504, statuses the API never sends; when no instance passes its
  health check the `failover` service answers from the error pages (503), so the API's own
  503 is never rewritten either; unknown paths go to the error pages (404);
- reads (GET, HEAD, OPTIONS) are retried on another instance, writes never.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from service.config import Settings

PUBLIC_PATHS = (
    "PathPrefix(`/customer`)",
    "PathPrefix(`/consumer`)",
    "PathPrefix(`/events`)",
    "Path(`/health`)",
    "Path(`/ready`)",
    "Path(`/docs`)",
    "Path(`/openapi.json`)",
)
READ_METHODS = ("GET", "HEAD", "OPTIONS")
EDGE_PREFIX = "/_edge"
API_SERVICE = "fintegrate-api"
INSTANCES_SERVICE = "api-instances"
PAGES_SERVICE = "edge-pages"
LOOPBACK_TRUSTED = ["127.0.0.1/32", "::1/128"]
RATE_PERIOD = "1m"


@dataclass(frozen=True)
class GatewayPlan:
    """Where everything listens and the limits; the rest of the configuration is fixed."""

    web_address: str
    budget_port: int
    pages_url: str
    upstreams: tuple[str, ...]
    dynamic_path: str
    internal_address: str | None = None
    dashboard_address: str | None = None
    rate_per_minute: int = 100
    rate_burst: int = 50
    health_interval_seconds: float = 5.0
    health_timeout_seconds: float = 2.0
    upstream_timeout_seconds: float = 30.0
    access_log: bool = False
    log_level: str = "INFO"

    @property
    def retry_attempts(self) -> int:
        """Tries of a read: one per instance, at least two."""
        return max(2, len(self.upstreams))


def plan_limits(settings: Settings) -> dict[str, Any]:
    """The plan fields that come from settings alone (shared by the CLI and compose)."""
    return {
        "rate_per_minute": settings.gateway_rate_limit_per_minute,
        "rate_burst": settings.gateway_rate_limit_burst,
        "health_interval_seconds": settings.gateway_health_interval_seconds,
        "health_timeout_seconds": settings.gateway_health_timeout_seconds,
        "upstream_timeout_seconds": settings.gateway_upstream_timeout_seconds,
    }


def compose_plan() -> GatewayPlan:
    """The compose stack's plan: container ports and names, default limits."""
    return GatewayPlan(
        web_address=":80",
        internal_address=":8081",
        dashboard_address=":8080",
        budget_port=8090,
        pages_url="http://gateway-pages:8082",
        upstreams=("http://customer-service-1:8000", "http://customer-service-2:8000"),
        dynamic_path="/etc/traefik/dynamic.yml",
        access_log=True,
        **plan_limits(Settings.model_construct()),
    )


def seconds(value: float) -> str:
    """A Go duration string: 5.0 -> "5s", 0.5 -> "500ms"."""
    if value == int(value):
        return f"{int(value)}s"
    return f"{round(value * 1000)}ms"


def static_config(plan: GatewayPlan) -> dict[str, Any]:
    """Traefik's static configuration (entry points, ping, file provider, logs)."""
    entry_points: dict[str, Any] = {
        # No trusted IPs: a client's own X-Forwarded-* headers are dropped at the door.
        "web": entry_point(plan.web_address, {"insecure": False}),
        # forwardAuth's check, on loopback: trusts the X-Forwarded-For it sets itself.
        "edge-budget": entry_point(
            f"127.0.0.1:{plan.budget_port}", {"trustedIPs": LOOPBACK_TRUSTED}
        ),
    }
    if plan.internal_address:
        entry_points["internal"] = entry_point(plan.internal_address, {"insecure": False})
    if plan.dashboard_address:
        entry_points["traefik"] = entry_point(plan.dashboard_address, {"insecure": False})
    config: dict[str, Any] = {
        "global": {"checkNewVersion": False, "sendAnonymousUsage": False},
        "entryPoints": entry_points,
        "ping": {"entryPoint": "edge-budget"},
        "providers": {"file": {"filename": plan.dynamic_path, "watch": False}},
        "log": {"level": plan.log_level, "noColor": True},
    }
    if plan.dashboard_address:
        config["api"] = {"dashboard": True, "insecure": True}
    if plan.access_log:
        config["accessLog"] = {}
    return config


def entry_point(address: str, forwarded: dict[str, Any]) -> dict[str, Any]:
    """An entry point that drops headers aliasing others (X_Forwarded_For and the like)."""
    return {
        "address": address,
        "forwardedHeaders": forwarded,
        "http": {"aliasHeadersStrategy": "delete"},
    }


def path_rule() -> str:
    return " || ".join(PUBLIC_PATHS)


def reads_rule(paths: str) -> str:
    methods = " || ".join(f"Method(`{method}`)" for method in READ_METHODS)
    return f"({paths}) && ({methods})"


def routers(plan: GatewayPlan) -> dict[str, Any]:
    """Public routers (budget on each, one shared bucket), internal ones, the budget check."""
    public = path_rule()
    found: dict[str, Any] = {
        "api-reads": router(
            ["web"], reads_rule(public), 30, ["edge-errors", "ip-budget", "retry-reads"]
        ),
        "api-writes": router(["web"], public, 20, ["edge-errors", "ip-budget"]),
        "unknown-path": router(["web"], "PathPrefix(`/`)", 1, ["ip-budget", "unknown-path"]),
        "ip-budget": {
            "entryPoints": ["edge-budget"],
            "rule": "PathPrefix(`/`)",
            "middlewares": ["ip-budget-exceeded", "ip-rate-limit"],
            "service": "ping@internal",
            "tls": {},  # HTTP/2: every check shares one connection
        },
        "gateway-ready": {
            "entryPoints": ["edge-budget"],
            "rule": f"Path(`{EDGE_PREFIX}/ready`)",
            "priority": 100,
            "service": PAGES_SERVICE,
        },
    }
    if plan.internal_address:
        everything = "PathPrefix(`/`)"
        found["internal-reads"] = router(
            ["internal"], reads_rule(everything), 30, ["edge-errors", "retry-reads"]
        )
        found["internal-writes"] = router(["internal"], everything, 20, ["edge-errors"])
    return found


def router(entry_points: list[str], rule: str, priority: int, middlewares: list[str]) -> Any:
    service = PAGES_SERVICE if "unknown-path" in middlewares else API_SERVICE
    return {
        "entryPoints": entry_points,
        "rule": rule,
        "priority": priority,
        "middlewares": middlewares,
        "service": service,
    }


def middlewares(plan: GatewayPlan) -> dict[str, Any]:
    """The budget (forwardAuth + rateLimit), error mapping, retry and unknown-path rewrite."""
    return {
        "ip-budget": {
            "forwardAuth": {
                "address": f"https://127.0.0.1:{plan.budget_port}/",
                # Over plain HTTP Go keeps 2 idle connections per host, so most checks
                # would open a new TCP connection; TLS brings HTTP/2 and one shared
                # connection. Traefik's own default certificate, on loopback: not verified.
                "tls": {"insecureSkipVerify": True},
                # X-Forwarded-For = the connection's address, whatever the client sent.
                "trustForwardHeader": False,
                "authRequestHeaders": ["Accept"],
                "maxResponseBodySize": 65536,
            }
        },
        "ip-rate-limit": {
            "rateLimit": {
                "average": plan.rate_per_minute,
                "period": RATE_PERIOD,
                "burst": plan.rate_burst,
                # The address forwardAuth puts in X-Forwarded-For: the client's connection.
                "sourceCriterion": {"ipStrategy": {"depth": 1}},
            }
        },
        "ip-budget-exceeded": error_pages(["429"]),
        "edge-errors": error_pages(["502", "504"]),
        "retry-reads": {"retry": {"attempts": plan.retry_attempts, "initialInterval": "50ms"}},
        "unknown-path": {"addPrefix": {"prefix": f"{EDGE_PREFIX}/404"}},
    }


def error_pages(statuses: list[str]) -> dict[str, Any]:
    return {
        "errors": {
            "status": statuses,
            "service": PAGES_SERVICE,
            "query": f"{EDGE_PREFIX}/{{status}}",
        }
    }


def services(plan: GatewayPlan) -> dict[str, Any]:
    """The instances behind a failover to the error pages, and the pages themselves."""
    return {
        API_SERVICE: {"failover": {"service": INSTANCES_SERVICE, "fallback": PAGES_SERVICE}},
        INSTANCES_SERVICE: {
            "loadBalancer": {
                "healthCheck": {
                    "path": "/health",
                    "interval": seconds(plan.health_interval_seconds),
                    "timeout": seconds(plan.health_timeout_seconds),
                },
                "serversTransport": "api-transport",
                "servers": [{"url": url} for url in plan.upstreams],
            }
        },
        PAGES_SERVICE: {"loadBalancer": {"servers": [{"url": plan.pages_url}]}},
    }


def dynamic_config(plan: GatewayPlan) -> dict[str, Any]:
    """Traefik's dynamic configuration: routers, middlewares, services, transport."""
    return {
        "http": {
            "routers": routers(plan),
            "middlewares": middlewares(plan),
            "services": services(plan),
            "serversTransports": {
                "api-transport": {
                    "forwardingTimeouts": {
                        "responseHeaderTimeout": seconds(plan.upstream_timeout_seconds)
                    }
                }
            },
        }
    }


def render(config: dict[str, Any], header: str = "") -> str:
    """YAML text of ``config``, after ``header`` comment lines."""
    comments = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
    return comments + yaml.safe_dump(config, sort_keys=False, width=120)
