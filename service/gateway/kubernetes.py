"""The gateway on Kubernetes: Traefik's CRDs rendered from the same plan as the CLI's.

``deploy/kubernetes/gateway.yaml`` carries the same routers (as one IngressRoute), the same
middlewares (the IP budget plugin with its envelope 429, the edge error pages, retried
reads, unknown paths) and the error-pages Deployment. Traefik itself (its Helm chart) must
load the local plugin: docs/operators.md "Running on Kubernetes" gives the values.
"""

from __future__ import annotations

from typing import Any

from service.gateway.compose import HEADER
from service.gateway.config import (
    EDGE_PREFIX,
    PAGES_SERVICE,
    GatewayPlan,
    compose_plan,
    middlewares,
    render,
    routers,
)

KUBERNETES_FILE = "deploy/kubernetes/gateway.yaml"
TRAEFIK_API = "traefik.io/v1alpha1"
PAGES_NAME, PAGES_PORT = "fintegrate-edge-pages", 8082
API: dict[str, Any] = {"name": "fintegrate-api", "port": 8000}
PAGES: dict[str, Any] = {"name": PAGES_NAME, "port": PAGES_PORT}
PAGES_LABELS = {"app.kubernetes.io/name": "fintegrate-edge-pages"}


def kubernetes_gateway(plan: GatewayPlan | None = None) -> list[dict[str, Any]]:
    """Middlewares, the IngressRoute of the public routers, and the error pages."""
    chosen = plan or compose_plan()
    return [*middleware_resources(chosen), ingress_route(chosen), *pages_resources()]


def middleware_resources(plan: GatewayPlan) -> list[dict[str, Any]]:
    """The plan's middlewares as Middleware objects (services named as Kubernetes ones)."""
    found = []
    for name, spec in middlewares(plan).items():
        if name == "plugin-loaded":  # the CLI's readiness probe; Kubernetes probes the pods
            continue
        if "errors" in spec:
            spec = {"errors": {**spec["errors"], "service": PAGES}}
        found.append(resource("Middleware", name, spec, TRAEFIK_API))
    return found


def ingress_route(plan: GatewayPlan) -> dict[str, Any]:
    """One route per public router of the plan, on Traefik's ``web`` entry point."""
    routes = [
        {
            "kind": "Rule",
            "match": router["rule"],
            "priority": router["priority"],
            "middlewares": [{"name": name} for name in router["middlewares"]],
            "services": [PAGES if router["service"] == PAGES_SERVICE else API],
        }
        for router in routers(plan).values()
        if router["entryPoints"] == ["web"]
    ]
    spec = {"entryPoints": ["web"], "routes": routes}
    return resource("IngressRoute", "fintegrate", spec, TRAEFIK_API)


def pages_resources() -> list[dict[str, Any]]:
    """The gateway's own answers (404, 429, 502, 503, 504) as envelopes; no database."""
    command = ["python", "-m", "service.gateway.pages", "--host", "0.0.0.0", "--port", "8082"]
    probe = {"httpGet": {"path": f"{EDGE_PREFIX}/ready", "port": PAGES_PORT}}
    container = {
        "name": "pages",
        "image": "fintegrate",
        "command": command,
        "ports": [{"name": "http", "containerPort": PAGES_PORT}],
        "readinessProbe": probe,
        "livenessProbe": probe,
        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}},
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
    }
    pod = {
        "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001},
        "containers": [container],
    }
    deployment = {
        "replicas": 2,
        "selector": {"matchLabels": PAGES_LABELS},
        "template": {"metadata": {"labels": PAGES_LABELS}, "spec": pod},
    }
    service = {
        "selector": PAGES_LABELS,
        "ports": [{"name": "http", "port": PAGES_PORT, "targetPort": "http"}],
    }
    return [
        resource("Deployment", PAGES_NAME, deployment, "apps/v1"),
        resource("Service", PAGES_NAME, service, "v1"),
    ]


def resource(kind: str, name: str, spec: dict[str, Any], api_version: str) -> dict[str, Any]:
    return {"apiVersion": api_version, "kind": kind, "metadata": {"name": name}, "spec": spec}


def kubernetes_file() -> str:
    """The text of deploy/kubernetes/gateway.yaml."""
    header = f"Traefik for Fintegrate on Kubernetes.\n{HEADER}"
    return "---\n".join(
        render(doc, header if i == 0 else "") for i, doc in enumerate(kubernetes_gateway())
    )
