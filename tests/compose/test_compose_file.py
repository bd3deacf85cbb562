"""The compose stack, Dockerfile and Traefik configuration, checked by reading the files.

No Docker engine runs here: these tests parse what `docker compose up` would read and
check it against SPEC section 7 and the Settings class.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from service.config import FLAT_SETTINGS, env_name, load_settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_DIR = ROOT / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
TRAEFIK_DIR = COMPOSE_DIR / "traefik"
DOCKERFILE = ROOT / "Dockerfile"

INFRA = ("postgres", "rabbitmq", "redis")
CUSTOMER_SERVICES = ("customer-service-1", "customer-service-2")
APP_SERVICES = (
    "migrate", *CUSTOMER_SERVICES, "relay", "maintain", "webhooks-deliver", "event-consumer",
)  # fmt: skip
SPEC_SERVICES = (*INFRA, "traefik", "gateway-pages", *APP_SERVICES, "prometheus", "grafana")
ROUTED_PREFIXES = ("/customer", "/consumer", "/events", "/webhooks", "/health", "/ready")
KNOWN_VARIABLES = {env_name(setting) for setting in FLAT_SETTINGS}
VARIABLE = re.compile(r"\bFINTEGRATE_[A-Z0-9_]+")


def load_yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), f"{path} is not a YAML mapping"
    return data


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE_FILE)


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


@pytest.fixture(scope="module")
def dynamic() -> dict[str, Any]:
    return load_yaml(TRAEFIK_DIR / "dynamic.yml")["http"]


@pytest.fixture(scope="module")
def static() -> dict[str, Any]:
    return load_yaml(TRAEFIK_DIR / "traefik.yml")


def env_file_path(entry: str | dict[str, Any]) -> Path:
    """An env_file entry; the git-ignored real file falls back to its committed example."""
    path = COMPOSE_DIR / (entry if isinstance(entry, str) else entry["path"])
    return path if path.exists() else path.with_name(path.name + ".example")


def env_file_entries(path: Path) -> dict[str, str]:
    """KEY=value lines of an env file (comments and blanks skipped)."""
    lines = (line.strip() for line in path.read_text().splitlines())
    pairs = (line.split("=", 1) for line in lines if line and not line.startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


def environment_of(service: dict[str, Any]) -> dict[str, str]:
    """A service's variables: its env files, then its environment block (which wins)."""
    values: dict[str, str] = {}
    for entry in service.get("env_file", []):
        values.update(env_file_entries(env_file_path(entry)))
    block = service.get("environment", {})
    if isinstance(block, list):
        block = dict(item.split("=", 1) for item in block)
    values.update({key: str(value) for key, value in block.items()})
    return values


def host_ports(service: dict[str, Any]) -> dict[int, int]:
    """Published ports as {host port: container port}."""
    published = {}
    for mapping in service.get("ports", []):
        parts = str(mapping).split(":")
        published[int(parts[-2])] = int(parts[-1].split("/")[0])
    return published


def depends_on(service: dict[str, Any]) -> dict[str, str]:
    return {name: spec["condition"] for name, spec in service.get("depends_on", {}).items()}


# -- services -------------------------------------------------------------------------------


def test_every_spec_service_is_present(services: dict[str, dict[str, Any]]):
    assert set(SPEC_SERVICES) <= set(services)


@pytest.mark.parametrize("name", SPEC_SERVICES)
def test_every_service_has_an_image_or_a_build(services: dict[str, dict[str, Any]], name: str):
    assert services[name].get("image") or services[name].get("build")


def test_app_services_share_one_image_built_from_the_dockerfile(
    services: dict[str, dict[str, Any]],
):
    images = {services[name]["image"] for name in APP_SERVICES}
    assert len(images) == 1
    for name in APP_SERVICES:
        build = services[name]["build"]
        assert (COMPOSE_DIR / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE


def test_published_ports(services: dict[str, dict[str, Any]]):
    assert host_ports(services["postgres"]) == {5435: 5432}
    assert {5672: 5672, 15672: 15672}.items() <= host_ports(services["rabbitmq"]).items()
    assert host_ports(services["traefik"]) == {80: 80, 8080: 8080}
    for name in APP_SERVICES:
        assert not host_ports(services[name]), f"{name} must be reached through Traefik"


def test_database_and_broker_credentials_match_the_spec(services: dict[str, dict[str, Any]]):
    postgres = services["postgres"]["environment"]
    assert postgres == {
        "POSTGRES_DB": "fintegrate_db",
        "POSTGRES_USER": "fintegrate_user",
        "POSTGRES_PASSWORD": "fintegrate_pass",
    }
    rabbit = services["rabbitmq"]
    assert rabbit["image"].startswith("rabbitmq:3-management")
    assert rabbit["environment"]["RABBITMQ_DEFAULT_USER"] == "fintegrate_user"
    assert rabbit["environment"]["RABBITMQ_DEFAULT_PASS"] == "fintegrate_pass"


@pytest.mark.parametrize("name", (*INFRA, *CUSTOMER_SERVICES, "traefik", "prometheus", "grafana"))
def test_long_running_services_have_healthchecks(services: dict[str, dict[str, Any]], name: str):
    check = services[name]["healthcheck"]
    assert check["test"] and not check.get("disable")


@pytest.mark.parametrize(
    "name", ("migrate", "relay", "maintain", "webhooks-deliver", "event-consumer")
)
def test_services_without_http_disable_the_image_healthcheck(
    services: dict[str, dict[str, Any]], name: str
):
    assert services[name]["healthcheck"] == {"disable": True}


@pytest.mark.parametrize("name", (*CUSTOMER_SERVICES, "relay", "maintain", "webhooks-deliver"))
def test_services_wait_for_migrations_and_healthy_infrastructure(
    services: dict[str, dict[str, Any]], name: str
):
    conditions = depends_on(services[name])
    assert conditions["migrate"] == "service_completed_successfully"
    for infra in INFRA:
        assert conditions[infra] == "service_healthy"


def test_migrate_is_a_one_shot_job_after_postgres(services: dict[str, dict[str, Any]]):
    migrate = services["migrate"]
    assert migrate["command"][:3] == ["fintegrate", "migrate", "apply"]
    assert "--wait" in migrate["command"]
    assert migrate["restart"] == "no"
    assert depends_on(migrate) == {"postgres": "service_healthy"}


def test_commands_of_the_workers(services: dict[str, dict[str, Any]]):
    for name in CUSTOMER_SERVICES:
        assert services[name]["command"] == [
            *("fintegrate", "serve", "--host", "0.0.0.0", "--port", "8000")
        ]
    assert services["relay"]["command"][:2] == ["fintegrate", "relay"]
    assert services["maintain"]["command"][:2] == ["fintegrate", "maintain"]
    assert services["webhooks-deliver"]["command"][:3] == ["fintegrate", "webhooks", "deliver"]
    assert services["event-consumer"]["command"][:3] == ["fintegrate", "consume", "--consumer"]
    for name in ("relay", "event-consumer"):
        assert "--metrics-port" in services[name]["command"]


# -- settings -------------------------------------------------------------------------------


def test_every_fintegrate_variable_is_a_settings_field(services: dict[str, dict[str, Any]]):
    named = set(VARIABLE.findall(COMPOSE_FILE.read_text()))
    for path in COMPOSE_DIR.glob("*.env*"):
        named |= set(VARIABLE.findall(path.read_text()))
    for service in services.values():
        named |= {key for key in environment_of(service) if key.startswith("FINTEGRATE_")}
    assert named, "no FINTEGRATE_ variable found at all"
    assert named <= KNOWN_VARIABLES, f"unknown settings: {sorted(named - KNOWN_VARIABLES)}"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_secrets_come_from_the_env_file(services: dict[str, dict[str, Any]], name: str):
    service = services[name]
    assert service["env_file"], "settings and secrets come from compose/fintegrate.env"
    for secret in ("FINTEGRATE_ADMIN_API_KEY", "FINTEGRATE_DATABASE_URL"):
        assert secret not in service.get("environment", {}), f"{secret} belongs in the env file"


def test_env_file_points_at_the_compose_services(services: dict[str, dict[str, Any]]):
    values = environment_of(services["customer-service-1"])
    database = urlsplit(values["FINTEGRATE_DATABASE_URL"])
    rabbit = urlsplit(values["FINTEGRATE_RABBITMQ_URL"])
    postgres = services["postgres"]["environment"]
    assert (database.hostname, database.port) == ("postgres", 5432)
    assert database.path == f"/{postgres['POSTGRES_DB']}"
    assert (database.username, database.password) == (
        postgres["POSTGRES_USER"],
        postgres["POSTGRES_PASSWORD"],
    )
    assert rabbit.hostname == "rabbitmq"
    assert rabbit.path == f"/{services['rabbitmq']['environment']['RABBITMQ_DEFAULT_VHOST']}"
    assert urlsplit(values["FINTEGRATE_REDIS_URL"]).hostname == "redis"


def test_example_env_file_loads_only_once_the_placeholder_secret_is_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    for key in KNOWN_VARIABLES:
        monkeypatch.delenv(key, raising=False)
    example = COMPOSE_DIR / "fintegrate.env.example"
    with pytest.raises(ValueError, match="placeholder"):
        load_settings(example)

    real = tmp_path / "fintegrate.env"
    real.write_text(
        example.read_text().replace("=changeme", "=a-real-generated-secret-of-40-characters")
    )
    loaded = load_settings(real)

    assert loaded.environment == "production"
    assert loaded.auth.admin_api_key == "a-real-generated-secret-of-40-characters"


def test_real_env_files_are_not_committed_or_copied_into_the_image():
    ignored = (COMPOSE_DIR / ".gitignore").read_text().split()
    assert "fintegrate.env" in ignored
    docker_ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".env", "*.env", "compose"} <= set(docker_ignored)
    assert not re.search(r"^\s*ENV\s+.*FINTEGRATE_", DOCKERFILE.read_text(), re.MULTILINE)


# -- traefik --------------------------------------------------------------------------------


def test_traefik_mounts_its_configuration(
    services: dict[str, dict[str, Any]], static: dict[str, Any]
):
    traefik = services["traefik"]
    assert traefik["image"].startswith("traefik:v3")
    assert "./traefik:/etc/traefik:ro" in traefik["volumes"]
    assert static["providers"]["file"]["filename"] == "/etc/traefik/dynamic.yml"
    assert static["entryPoints"]["web"]["address"] == ":80"
    assert static["api"]["dashboard"] is True


def test_every_referenced_middleware_service_and_entrypoint_is_defined(
    dynamic: dict[str, Any], static: dict[str, Any]
):
    for name, router in dynamic["routers"].items():
        for middleware in router.get("middlewares", []):
            assert middleware in dynamic["middlewares"], f"router {name}: {middleware}"
        service = router["service"]
        assert service in dynamic["services"] or service.endswith("@internal"), f"router {name}"
        for entry_point in router["entryPoints"]:
            assert entry_point in static["entryPoints"], f"router {name}: {entry_point}"


def test_public_routers_cover_the_api_and_share_one_ip_budget(
    dynamic: dict[str, Any], static: dict[str, Any]
):
    public = [r for r in dynamic["routers"].values() if "web" in r["entryPoints"]]
    rules = " ".join(router["rule"] for router in public)
    for prefix in ROUTED_PREFIXES:
        assert f"(`{prefix}`)" in rules, f"no public router for {prefix}"
    for router in public:
        assert "ip-budget" in router["middlewares"], f"{router['rule']} is not rate limited"
    used = {name for router in public for name in router["middlewares"]}
    plugins = [name for name in used if "plugin" in dynamic["middlewares"][name]]
    assert plugins == ["ip-budget"], "every public router shares the one budget middleware"
    assert not any("rateLimit" in m for m in dynamic["middlewares"].values()), "per-router"
    assert static["experimental"]["localPlugins"]["ipbudget"]["moduleName"] == (
        "github.com/fintegrate/ipbudget"
    )


def test_ip_budget_is_100_requests_per_minute(dynamic: dict[str, Any]):
    budget = dynamic["middlewares"]["ip-budget"]["plugin"]["ipbudget"]
    assert budget["average"] == 100  # per minute
    assert budget["burst"] >= 1
    assert json.loads(budget["body"])["detail"]["status_code"] == "429"


def test_traefik_gets_the_plugin_source(services: dict[str, dict[str, Any]]):
    traefik = services["traefik"]
    mount = "../service/gateway/plugins-local:/plugins-local:ro"
    assert mount in traefik["volumes"]
    assert traefik["working_dir"] == "/"
    source = COMPOSE_DIR / mount.split(":")[0] / "src/github.com/fintegrate/ipbudget"
    assert (source / "ipbudget.go").is_file() and (source / ".traefik.yml").is_file()


def test_both_customer_services_are_load_balanced_with_health_checks(
    dynamic: dict[str, Any], services: dict[str, dict[str, Any]]
):
    balancer = dynamic["services"]["api-instances"]["loadBalancer"]
    urls = {urlsplit(server["url"]) for server in balancer["servers"]}
    assert {(url.hostname, url.port) for url in urls} == {(n, 8000) for n in CUSTOMER_SERVICES}
    assert balancer["healthCheck"]["path"] == "/health"
    for name in CUSTOMER_SERVICES:
        assert name in services


# -- image ----------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    lines = (line.strip() for line in text.splitlines())
    pairs = (line.split(None, 1) for line in lines if line and not line.startswith("#"))
    return [(pair[0].upper(), pair[1] if len(pair) > 1 else "") for pair in pairs]


def test_image_runs_as_a_non_root_user_with_a_healthcheck():
    instructions = dockerfile_instructions()
    users = [args for name, args in instructions if name == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    healthchecks = [args for name, args in instructions if name == "HEALTHCHECK"]
    assert healthchecks and "/health" in healthchecks[-1] and "urllib" in healthchecks[-1]


def test_image_is_slim_and_installs_the_package_with_its_migrations():
    instructions = dockerfile_instructions()
    bases = [args.split()[0] for name, args in instructions if name == "FROM"]
    assert bases and all(base.startswith("python:3.11-slim") for base in bases)
    runs = " ".join(args for name, args in instructions if name == "RUN")
    copies = [args for name, args in instructions if name == "COPY"]
    assert "pip install --require-hashes -r requirements-runtime.lock" in runs
    assert "pip install --no-deps ." in runs
    assert any(args.startswith("migrations ") for args in copies)
