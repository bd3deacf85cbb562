"""deploy/kubernetes/: every manifest is valid for Kubernetes and agrees with the code.

Each resource is validated (strictly: no unknown field) against the Kubernetes schemas of
``kubernetes-validate``; the Traefik Middleware (a CRD, no schema there) must carry
exactly the gateway's IP budget. Every FINTEGRATE_* variable the manifests set is a field
of ``Settings``, no secret value is committed, and the shapes the docs promise hold.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from service.config import Settings
from service.gateway.config import PLUGIN_NAME, PUBLIC_PATHS, compose_plan, ip_budget

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.31.0"
TRAEFIK_GROUP = "traefik.io/"


def manifest_files() -> list[Path]:
    return sorted(path for path in DEPLOY.glob("*.yaml") if path.name != "kustomization.yaml")


def resources() -> list[dict[str, Any]]:
    found = []
    for path in manifest_files():
        found += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return found


def by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {r["metadata"]["name"]: r for r in resources() if r["kind"] == kind}


def containers(resource: dict[str, Any]) -> list[dict[str, Any]]:
    spec = resource["spec"]["template"]["spec"]
    return list(spec["containers"])


def env_names() -> set[str]:
    """Every variable the manifests give a process: ConfigMap, Secret and env entries."""
    names: set[str] = set()
    for resource in resources():
        if resource["kind"] == "ConfigMap":
            names |= set(resource["data"])
        if resource["kind"] == "Secret":
            names |= set(resource.get("stringData", {})) | set(resource.get("data", {}))
        if resource["kind"] in ("Deployment", "Job"):
            names |= {e["name"] for c in containers(resource) for e in c.get("env", [])}
    return names


def test_the_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(p.name for p in manifest_files())


@pytest.mark.parametrize(
    "resource",
    [r for r in resources() if not r["apiVersion"].startswith(TRAEFIK_GROUP)],
    ids=lambda r: f"{r['kind']}/{r['metadata']['name']}",
)
def test_each_resource_is_valid_for_kubernetes(resource: dict[str, Any]) -> None:
    kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)


def test_the_ingress_carries_the_gateways_ip_budget() -> None:
    (middleware,) = [r for r in resources() if r["kind"] == "Middleware"]
    assert middleware["apiVersion"] == "traefik.io/v1alpha1"
    assert middleware["spec"] == {"plugin": {PLUGIN_NAME: ip_budget(compose_plan())}}
    ingress = by_kind("Ingress")["fintegrate"]
    annotation = ingress["metadata"]["annotations"][
        "traefik.ingress.kubernetes.io/router.middlewares"
    ]
    assert annotation == f"fintegrate-{middleware['metadata']['name']}@kubernetescrd"
    paths = {p["path"] for p in ingress["spec"]["rules"][0]["http"]["paths"]}
    public = {rule.split("`")[1] for rule in PUBLIC_PATHS}
    assert paths == public


def test_every_setting_the_manifests_set_exists() -> None:
    names = env_names()
    assert names, "no FINTEGRATE_* variable found"
    unknown = [
        n for n in names if n.removeprefix("FINTEGRATE_").lower() not in Settings.model_fields
    ]
    assert all(n.startswith("FINTEGRATE_") for n in names)
    assert unknown == []


def test_no_secret_value_is_committed() -> None:
    for secret in by_kind("Secret").values():
        assert "data" not in secret
        assert set(secret["stringData"].values()) == {""}


def test_workloads_read_the_shared_settings_and_the_api_is_probed() -> None:
    deployments = by_kind("Deployment")
    for name in (
        "fintegrate-api",
        "fintegrate-relay",
        "fintegrate-maintain",
        "fintegrate-webhooks",
    ):
        (container,) = containers(deployments[name])
        sources = {next(iter(s.values()))["name"] for s in container["envFrom"]}
        assert sources == {"fintegrate-settings", "fintegrate-secrets"}, name
    (api,) = containers(deployments["fintegrate-api"])
    assert api["livenessProbe"]["httpGet"]["path"] == "/health"
    assert api["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert deployments["fintegrate-relay"]["spec"]["replicas"] == 2
    assert deployments["fintegrate-maintain"]["spec"]["replicas"] == 1
    hpa = by_kind("HorizontalPodAutoscaler")["fintegrate-api"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == "fintegrate-api"
    labels = deployments["fintegrate-api"]["spec"]["template"]["metadata"]["labels"]
    pdb = by_kind("PodDisruptionBudget")["fintegrate-api"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (worker,) = containers(deployments["worker-example"])
    assert "envFrom" not in worker  # a tenant's worker never gets the platform's secrets
