"""Traefik's static and dynamic configuration, from one plan, for the CLI and for compose.

`fintegrate gateway` and `compose/traefik/*.yml` render the same two functions; only the
addresses differ (`GatewayPlan`). The design, in short (docs/gateway.md has the why):

- every public router carries `ip-budget`, the local plugin in `plugins-local/` (Go, run by
  Traefik's interpreter): its instances share one token bucket per client IP, so a client
  has one budget across every route, and it answers its own 429 with the envelope rendered
  here; no `errors` middleware sees a 429, so the API's per-key 429 passes through untouched;
- `edge-errors` maps 502/504, statuses the API never sends; when no instance passes its
  health check the `failover` service answers from the error pages (503), so the API's own
  503 is never rewritten either; unknown paths go to the error pages (404);
- reads (GET, HEAD, OPTIONS) are retried on another instance, writes never.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from service.config import GatewaySettings
from service.gateway.pages import EDGE_HEADER, EdgeLimits, edge_body, too_many

PUBLIC_PATHS = (
    "PathPrefix(`/customer`)",
    "PathPrefix(`/consumer`)",
    "PathPrefix(`/events`)",
    "PathPrefix(`/webhooks`)",
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
PLUGINS_DIR = Path(__file__).resolve().parent / "plugins-local"
PLUGIN_NAME = "ipbudget"
PLUGIN_MODULE = "github.com/fintegrate/ipbudget"
MAX_IDLE_UPSTREAM_CONNECTIONS = 200  # kept-alive connections to each API instance
# How long an idle upstream connection is kept: below the instances' keep-alive
# (fintegrate serve: 75 s), so the gateway closes it first.
UPSTREAM_IDLE_SECONDS = 60
MAX_CLIENTS = 100_000  # client IPs the budget remembers at once (docs/gateway.md)


@dataclass(frozen=True)
class GatewayPlan:
    """Where everything listens and the limits; the rest of the configuration is fixed."""

    web_address: str
    edge_port: int
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

    @property
    def limits(self) -> EdgeLimits:
        """The figures the gateway's own answers quote."""
        return EdgeLimits(
            self.rate_per_minute,
            self.rate_burst,
            self.health_interval_seconds,
            self.upstream_timeout_seconds,
        )


def plan_limits(settings: GatewaySettings) -> dict[str, Any]:
    """The plan fields that come from settings alone (shared by the CLI and compose)."""
    return {
        "rate_per_minute": settings.rate_limit_per_minute,
        "rate_burst": settings.rate_limit_burst,
        "health_interval_seconds": settings.health_interval_seconds,
        "health_timeout_seconds": settings.health_timeout_seconds,
        "upstream_timeout_seconds": settings.upstream_timeout_seconds,
    }


def compose_plan() -> GatewayPlan:
    """The compose stack's plan: container ports and names, default limits."""
    return GatewayPlan(
        web_address=":80",
        internal_address=":8081",
        dashboard_address=":8080",
        edge_port=8090,
        pages_url="http://gateway-pages:8082",
        upstreams=("http://customer-service-1:8000", "http://customer-service-2:8000"),
        dynamic_path="/etc/traefik/dynamic.yml",
        access_log=True,
        **plan_limits(GatewaySettings()),
    )


def seconds(value: float) -> str:
    """A Go duration string: 5.0 -> "5s", 0.5 -> "500ms"."""
    if value == int(value):
        return f"{int(value)}s"
    return f"{round(value * 1000)}ms"


def static_config(plan: GatewayPlan) -> dict[str, Any]:
    """Traefik's static configuration (entry points, ping, file provider, plugin, logs)."""
    entry_points: dict[str, Any] = {
        # No trusted IPs: a client's own X-Forwarded-* headers are dropped at the door.
        "web": entry_point(plan.web_address, {"insecure": False}),
        # Loopback only: Traefik's ping and the readiness route of `fintegrate gateway`.
        "edge": entry_point(f"127.0.0.1:{plan.edge_port}", {"insecure": False}),
    }
    if plan.internal_address:
        entry_points["internal"] = entry_point(plan.internal_address, {"insecure": False})
    if plan.dashboard_address:
        entry_points["traefik"] = entry_point(plan.dashboard_address, {"insecure": False})
    config: dict[str, Any] = {
        "global": {"checkNewVersion": False, "sendAnonymousUsage": False},
        "entryPoints": entry_points,
        "ping": {"entryPoint": "edge"},
        "providers": {"file": {"filename": plan.dynamic_path, "watch": False}},
        # Read from ./plugins-local/src/<moduleName> of Traefik's working directory.
        "experimental": {"localPlugins": {PLUGIN_NAME: {"moduleName": PLUGIN_MODULE}}},
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
    """Public routers (budget on each, one shared bucket per client), internal ones, ready."""
    public = path_rule()
    found: dict[str, Any] = {
        "api-reads": router(
            ["web"], reads_rule(public), 30, ["edge-errors", "ip-budget", "retry-reads"]
        ),
        "api-writes": router(["web"], public, 20, ["edge-errors", "ip-budget"]),
        "unknown-path": router(["web"], "PathPrefix(`/`)", 1, ["ip-budget", "unknown-path"]),
        "gateway-ready": {
            "entryPoints": ["edge"],
            # Ready means the plugin loaded too: a router whose middleware failed never routes.
            "middlewares": ["plugin-loaded"],
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
    """The budget (the plugin), error mapping, retry and unknown-path rewrite."""
    budget = ip_budget(plan)
    return {
        "ip-budget": {"plugin": {PLUGIN_NAME: budget}},
        # Its own buckets (instances share them by middleware name): probes spend no budget.
        "plugin-loaded": {"plugin": {PLUGIN_NAME: {**budget, "average": 60_000}}},
        "edge-errors": error_pages(["502", "504"]),
        # Traefik retries no POST, PUT, PATCH or DELETE (retryNonIdempotentMethod: false).
        "retry-reads": {"retry": {"attempts": plan.retry_attempts, "initialInterval": "50ms"}},
        "unknown-path": {"addPrefix": {"prefix": f"{EDGE_PREFIX}/404"}},
    }


def ip_budget(plan: GatewayPlan) -> dict[str, Any]:
    """The plugin's settings: the bucket, and its 429 answer rendered from the error pages."""
    limits = plan.limits
    wait = limits.token_seconds
    return {
        "average": plan.rate_per_minute,
        "burst": plan.rate_burst,
        "body": edge_body(429, too_many(limits, wait)).decode(),
        "retryAfter": str(wait),
        "header": EDGE_HEADER,
        "maxClients": MAX_CLIENTS,
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
                    # Unset in a serversTransport of the file provider, Go keeps 2 idle
                    # connections per host, and requests past them open a new connection
                    # to the instance (docs/gateway.md).
                    "maxIdleConnsPerHost": MAX_IDLE_UPSTREAM_CONNECTIONS,
                    "forwardingTimeouts": {
                        "responseHeaderTimeout": seconds(plan.upstream_timeout_seconds),
                        "idleConnTimeout": seconds(UPSTREAM_IDLE_SECONDS),
                    },
                }
            },
        }
    }


def render(config: dict[str, Any], header: str = "") -> str:
    """YAML text of ``config``, after ``header`` comment lines."""
    comments = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
    return comments + yaml.safe_dump(config, sort_keys=False, width=120)
