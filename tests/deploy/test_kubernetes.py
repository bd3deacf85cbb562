"""deploy/kubernetes: every manifest valid, every setting and command real, no secret in git."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import typer.main
import yaml

from fintegrate_cli.main import app
from service.config import FLAT_SETTINGS, GatewaySettings, env_name
from service.gateway.kubernetes import KUBERNETES_FILE, kubernetes_file

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.33.0"  # the oldest minor still supported upstream on 2026-12-07
TRAEFIK_KINDS = {"Middleware", "IngressRoute"}


def kustomization() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    return loaded


def documents() -> list[dict[str, Any]]:
    """Every object of every file the kustomization lists."""
    found = []
    for name in kustomization()["resources"]:
        found += [doc for doc in yaml.safe_load_all((MANIFESTS / name).read_text()) if doc]
    return found


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for doc in documents() if doc["kind"] == kind]


def containers() -> list[dict[str, Any]]:
    pods = [doc["spec"]["template"]["spec"] for doc in of_kind("Deployment") + of_kind("Job")]
    return [container for pod in pods for container in pod["containers"]]


def test_the_kustomization_lists_every_manifest_file() -> None:
    on_disk = {path.name for path in MANIFESTS.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization()["resources"]) == on_disk


@pytest.mark.parametrize("doc", documents(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_every_core_object_validates_against_the_kubernetes_schemas(doc: dict[str, Any]) -> None:
    if doc["kind"] in TRAEFIK_KINDS:
        assert doc["apiVersion"] == "traefik.io/v1alpha1"
        return
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_a_broken_manifest_is_refused_by_the_validator() -> None:
    broken = {**of_kind("Deployment")[0], "spec": {"replicas": "two"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_every_setting_set_is_a_real_setting() -> None:
    known = {env_name(setting) for setting in FLAT_SETTINGS}
    assert known
    set_names = {key for doc in of_kind("ConfigMap") for key in doc["data"]}
    set_names |= {e["name"] for c in containers() for e in c.get("env", [])}
    assert set_names, "the manifests set no setting at all"
    assert {name for name in set_names if name.startswith("FINTEGRATE_")} <= known
    assert set_names - known == set()


def test_no_secret_value_is_committed() -> None:
    assert not of_kind("Secret")
    texts = "".join(path.read_text() for path in MANIFESTS.glob("*.yaml"))
    assert not re.search(r"fk_[A-Za-z0-9]", texts)  # no API key
    assert not re.search(r"://[^\s<:/@]+:[^\s<@]+@", texts)  # no URL with a real password
    referenced = {
        ref["secretRef"]["name"]
        for c in containers()
        for ref in c.get("envFrom", [])
        if "secretRef" in ref
    }
    operators = (ROOT / "docs" / "operators.md").read_text()
    assert referenced and all(name in operators for name in referenced)


def test_every_container_runs_a_real_command_with_real_options() -> None:
    root = typer.main.get_command(app)
    for container in containers():
        argv = container["command"]
        if argv[0] != "fintegrate":
            assert argv[:3] == ["python", "-m", "service.gateway.pages"]
            continue
        command, rest = root, argv[1:]
        while rest and rest[0] in getattr(command, "commands", {}):
            command, rest = command.commands[rest[0]], rest[1:]  # type: ignore[attr-defined]
        options = {opt for param in command.params for opt in getattr(param, "opts", [])}
        used = {word for word in rest if word.startswith("--")}
        assert used <= options, f"{argv}: unknown options {used - options}"


def test_the_api_is_probed_scaled_and_protected() -> None:
    (api,) = [d for d in of_kind("Deployment") if d["metadata"]["name"] == "fintegrate-api"]
    (container,) = api["spec"]["template"]["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    (hpa,) = of_kind("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "fintegrate-api"
    budgets = [d["spec"]["selector"]["matchLabels"] for d in of_kind("PodDisruptionBudget")]
    assert {"app.kubernetes.io/name": "fintegrate-api"} in budgets


def test_relays_share_by_leases_and_maintain_runs_alone() -> None:
    replicas = {d["metadata"]["name"]: d["spec"]["replicas"] for d in of_kind("Deployment")}
    assert replicas["fintegrate-relay"] == 2
    assert replicas["fintegrate-maintain"] == 1
    (maintain,) = [
        d for d in of_kind("Deployment") if d["metadata"]["name"] == "fintegrate-maintain"
    ]
    assert maintain["spec"]["strategy"]["type"] == "Recreate"
    (job,) = of_kind("Job")
    assert job["spec"]["template"]["spec"]["containers"][0]["command"][1:3] == ["migrate", "apply"]


def test_selectors_match_their_pods_and_services_their_deployments() -> None:
    labels = []
    for deployment in of_kind("Deployment"):
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
        labels.append(selector)
    for service in of_kind("Service"):
        assert service["spec"]["selector"] in labels


def test_the_gateway_carries_the_ip_budget_on_every_public_route() -> None:
    (route,) = of_kind("IngressRoute")
    middlewares = {doc["metadata"]["name"] for doc in of_kind("Middleware")}
    services = {doc["metadata"]["name"] for doc in of_kind("Service")}
    for rule in route["spec"]["routes"]:
        names = {m["name"] for m in rule["middlewares"]}
        assert "ip-budget" in names and names <= middlewares
        assert {s["name"] for s in rule["services"]} <= services
    (budget,) = [d for d in of_kind("Middleware") if d["metadata"]["name"] == "ip-budget"]
    assert (
        budget["spec"]["plugin"]["ipbudget"]["average"] == GatewaySettings().rate_limit_per_minute
    )


def test_gateway_yaml_equals_the_generated_configuration() -> None:
    assert (ROOT / KUBERNETES_FILE).read_text() == kubernetes_file(), (
        f"{KUBERNETES_FILE} drifted from service/gateway/: run scripts/gen_gateway_config.py"
    )
