"""Reading what a Python source imports, for the tests that hold imports to a rule."""

from __future__ import annotations

import ast
from collections.abc import Iterator


def import_statements(
    source: str, module: str, is_package: bool
) -> Iterator[tuple[str, list[str]]]:
    """Each import of ``source`` (the code of ``module``) as (the module it names, the names
    it takes from it), relative imports resolved; ``import a.b`` is ``("a.b", [])``."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from ((alias.name, []) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            yield base, [alias.name for alias in node.names]
