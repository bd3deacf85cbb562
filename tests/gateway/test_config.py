"""The compose stack's Traefik files are exactly what the CLI's configuration renders."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import yaml

from fintegrate_cli.server import KEEP_ALIVE_SECONDS
from service.gateway.compose import COMPOSE_FILES, compose_files
from service.gateway.config import (
    UPSTREAM_IDLE_SECONDS,
    GatewayPlan,
    compose_plan,
    dynamic_config,
    static_config,
)

ROOT = Path(__file__).resolve().parents[2]


def test_compose_traefik_files_equal_the_generated_configuration() -> None:
    for name, text in compose_files().items():
        committed = (ROOT / COMPOSE_FILES[name]).read_text()
        assert committed == text, (
            f"{COMPOSE_FILES[name]} drifted from service/gateway/config.py: "
            "run scripts/gen_gateway_config.py"
        )


def cli_like_plan() -> GatewayPlan:
    return GatewayPlan(
        web_address="127.0.0.1:18000",
        edge_port=18090,
        pages_url="http://127.0.0.1:18082",
        upstreams=("http://127.0.0.1:18001", "http://127.0.0.1:18002"),
        dynamic_path="/tmp/dynamic.yml",
        internal_address="127.0.0.1:18081",
        dashboard_address="127.0.0.1:18080",
    )


def shape(config: dict) -> dict:
    """Routers and middlewares with addresses left out: what must match across the two."""
    http = config["http"]
    return {
        "routers": http["routers"],
        "middlewares": {
            name: sorted(middleware) for name, middleware in http["middlewares"].items()
        },
        "services": sorted(http["services"]),
    }


def test_the_cli_and_compose_run_the_same_routers_and_middlewares() -> None:
    cli, compose = dynamic_config(cli_like_plan()), dynamic_config(compose_plan())
    assert shape(cli) == shape(compose)
    cli_static, compose_static = static_config(cli_like_plan()), static_config(compose_plan())
    assert sorted(cli_static["entryPoints"]) == sorted(compose_static["entryPoints"])
    assert yaml.safe_load(compose_files()["dynamic"]) == compose


def test_the_public_entry_point_trusts_no_forwarded_headers() -> None:
    web = static_config(compose_plan())["entryPoints"]["web"]
    assert web["forwardedHeaders"] == {"insecure": False}  # no trustedIPs: client XFF dropped


def test_the_429_the_plugin_sends_is_the_error_pages_envelope() -> None:
    plan = replace(cli_like_plan(), rate_per_minute=20, rate_burst=7)
    budget = dynamic_config(plan)["http"]["middlewares"]["ip-budget"]["plugin"]["ipbudget"]
    body = json.loads(budget["body"])
    assert body["data"] == {}
    assert body["detail"]["status_code"] == "429"
    assert "20 requests per minute" in body["detail"]["status_description"]
    assert "bursts of 7" in body["detail"]["status_description"]
    assert budget["retryAfter"] == "3"  # a token every 60 / 20 s
    assert (budget["average"], budget["burst"]) == (20, 7)


def test_the_gateway_drops_an_idle_upstream_connection_before_the_instance_does() -> None:
    """Otherwise a request can go down a connection the instance is closing (a 502)."""
    forwarding = dynamic_config(cli_like_plan())["http"]["serversTransports"]["api-transport"][
        "forwardingTimeouts"
    ]
    assert forwarding["idleConnTimeout"] == f"{UPSTREAM_IDLE_SECONDS}s"
    assert UPSTREAM_IDLE_SECONDS < KEEP_ALIVE_SECONDS
