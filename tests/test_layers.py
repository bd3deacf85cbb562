"""Imports run only downward through the layers that docs/ARCHITECTURE.md states.

Each module of ``service`` and ``fintegrate_cli`` belongs to the layer of its longest
listed prefix (an entry ending in ``$`` names one module only, not what is under it); a
module may import its own layer or a lower one, never a higher one. A new room must be
given its layer here. Tests and scripts are outside the rule.
"""

from __future__ import annotations

from pathlib import Path

from tests.support.imports import import_statements

ROOT = Path(__file__).resolve().parents[1]

# Lowest first; the same order, with the reasons, is in docs/ARCHITECTURE.md "Layers".
LAYERS: tuple[tuple[str, ...], ...] = (
    ("service.config", "service.kit"),
    (
        "service.auth",
        "service.ratelimit",
        "service.migrations",
        "service.messaging.topology",
        "service.messaging.messages",
        "service.messaging.connection",
        "service.messaging.shutdown",
        "service.messaging.tracing",
        "service.messaging.operate",
        "service.messaging.publish.publisher",
        "service.messaging$",
    ),
    ("service.http",),
    (
        "service.consumers",
        "service.customers",
        "service.events",
        "service.ops",
        "service.gateway",
        "service.webhooks",
        "service.webhooks.delivery.repository",
    ),
    (
        "service.delivery",
        "service.messaging.publish",
        "service.messaging.consume",
        "service.messaging.metrics",
        "service.webhooks.delivery",
    ),
    ("service.app", "service.bench", "service$", "fintegrate_cli"),
)


def layer_of(module: str) -> int | None:
    """The layer of ``module`` by its longest listed prefix; None outside the project."""
    best: tuple[int, int] | None = None
    for index, entries in enumerate(LAYERS):
        for entry in entries:
            prefix = entry.removesuffix("$")
            covers = module == prefix or (
                not entry.endswith("$") and module.startswith(prefix + ".")
            )
            if covers and (best is None or len(prefix) > best[0]):
                best = (len(prefix), index)
    return None if best is None else best[1]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(source: str, module: str, is_package: bool) -> set[str]:
    """Every project module ``source`` imports, relative imports resolved."""
    found: set[str] = set()
    for base, taken in import_statements(source, module, is_package):
        names = [f"{base}.{name}" for name in taken] if taken else [base]
        found.update(names)
        if not all(is_module(name) for name in names):
            found.add(base)  # ``from package import submodule`` depends on the submodule
    return {name for name in found if layer_of(name) is not None}


def is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or path.joinpath("__init__.py").exists()


def upward_imports(source: str, module: str, is_package: bool = False) -> list[str]:
    """The imports of ``module`` that reach a higher layer, as ``a -> b`` lines."""
    own = layer_of(module)
    assert own is not None, module
    return sorted(
        f"{module} -> {name}"
        for name in imports_of(source, module, is_package)
        if (layer_of(name) or 0) > own
    )


def project_modules() -> list[Path]:
    return sorted(
        [*ROOT.joinpath("service").rglob("*.py"), *ROOT.joinpath("fintegrate_cli").rglob("*.py")]
    )


def test_every_module_has_a_layer() -> None:
    assert not [str(path) for path in project_modules() if layer_of(module_name(path)) is None]


def test_no_import_runs_up_the_layers() -> None:
    offending = [
        line
        for path in project_modules()
        for line in upward_imports(
            path.read_text(), module_name(path), is_package=path.name == "__init__.py"
        )
    ]
    assert not offending, "imports against docs/ARCHITECTURE.md's layers:\n" + "\n".join(offending)


def test_a_planted_upward_import_is_caught() -> None:
    planted = "from service.http.request import settings_of\nfrom service.kit import db\n"
    assert upward_imports(planted, "service.auth.dependencies") == [
        "service.auth.dependencies -> service.http.request",
        "service.auth.dependencies -> service.http.request.settings_of",
    ]
    relative = "from ..customers import service\n"
    assert upward_imports(relative, "service.events.repository") == []
    assert upward_imports("from ..delivery import service\n", "service.events.repository") == [
        "service.events.repository -> service.delivery.service",
    ]
    assert upward_imports("import fintegrate_cli.main\n", "service.kit.db") == [
        "service.kit.db -> fintegrate_cli.main"
    ]
    assert layer_of("service.messaging.webhooks") is None  # a new wing needs its layer
