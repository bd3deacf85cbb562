"""The test tree's own rule: what tests share lives in tests/support (helpers) or in a
conftest.py (fixtures), so no module under tests/ imports a ``test_*`` module or a conftest.

A test module imported by another runs its module-level code twice and ties two test files
together; pytest does not mean conftest.py files to be imported at all.
"""

from __future__ import annotations

from pathlib import Path

from tests.support.imports import import_statements

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


def module_name(path: Path) -> str:
    """``tests/service/test_x.py`` -> ``tests.service.test_x``."""
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def imported_modules(source: str, importer: str) -> set[str]:
    """Every module (or module-or-name) ``importer``'s source imports, as absolute names."""
    modules: set[str] = set()
    for base, taken in import_statements(source, importer, is_package=False):
        modules.add(base)
        modules.update(f"{base}.{name}" for name in taken)
    return modules


def forbidden(modules: set[str]) -> list[str]:
    """Those of ``modules`` that are a test module or a conftest under tests/."""
    return sorted(
        name
        for name in modules
        if name.split(".")[0] == "tests"
        and name.rsplit(".", 1)[-1].startswith(("test_", "conftest"))
    )


def test_no_module_under_tests_imports_a_test_module_or_a_conftest() -> None:
    offences = {
        module_name(path): found
        for path in sorted(TESTS.rglob("*.py"))
        if (found := forbidden(imported_modules(path.read_text(), module_name(path))))
    }
    assert offences == {}, "move what is shared to tests/support or a conftest.py fixture"


def test_the_rule_sees_absolute_relative_and_conftest_imports() -> None:
    planted = (
        "from tests.service.messaging.consume.test_consumer import WorkerThread\n"
        "from .test_republish import post\n"
        "from tests.service import conftest\n"
        "import tests.fintegrate_cli.conftest\n"
        "from tests.support.worker import WorkerThread\n"
    )
    found = forbidden(imported_modules(planted, "tests.service.delivery.test_x"))
    assert found == [
        "tests.fintegrate_cli.conftest",
        "tests.service.conftest",
        "tests.service.delivery.test_republish",
        "tests.service.messaging.consume.test_consumer",
    ]
