"""The lock files agree with pyproject.toml: every declared dependency is pinned, in range.

``scripts/bootstrap.sh`` installs ``requirements.lock`` (runtime + dev extra) and the image
installs ``requirements-runtime.lock``, both with ``--require-hashes`` and the project with
``--no-deps``: a dependency added to pyproject.toml but missing from a lock would be absent
from every install. The fix for any failure here is ``scripts/lock.sh``.
"""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
FULL_LOCK = ROOT / "requirements.lock"
RUNTIME_LOCK = ROOT / "requirements-runtime.lock"
PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[^\s;\\]+)")
STALE = "run scripts/lock.sh and commit the lock files"


def declared(section: str) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    raw = (
        project["dependencies"]
        if section == "runtime"
        else project["optional-dependencies"][section]
    )
    return [Requirement(line) for line in raw]


def pins(lock: Path) -> dict[str, str]:
    """``{canonical name: version}`` of every ``name==version`` line."""
    found = {}
    for line in lock.read_text().splitlines():
        match = PIN.match(line)
        if match:
            found[canonicalize_name(match["name"])] = match["version"]
    return found


def pulled_in_by_extras(requirement: Requirement) -> list[Requirement]:
    """What ``requirement``'s extras (``uvicorn[standard]``) add on this platform."""
    added = []
    for line in metadata.requires(requirement.name) or []:
        child = Requirement(line)
        marker = child.marker
        if marker is None or marker.evaluate({"extra": ""}):
            continue  # not behind an extra
        if any(marker.evaluate({"extra": extra}) for extra in requirement.extras):
            added.append(child)
    return added


@pytest.mark.parametrize(
    ("lock", "sections"), [(FULL_LOCK, ("runtime", "dev")), (RUNTIME_LOCK, ("runtime",))]
)
def test_every_declared_dependency_is_pinned_within_its_range(
    lock: Path, sections: tuple[str, ...]
) -> None:
    pinned = pins(lock)
    problems = []
    for section in sections:
        for requirement in declared(section):
            for wanted in (requirement, *pulled_in_by_extras(requirement)):
                version = pinned.get(canonicalize_name(wanted.name))
                if version is None:
                    problems.append(f"{wanted} ({section}) is not pinned")
                elif not wanted.specifier.contains(version, prereleases=True):
                    problems.append(f"{wanted} ({section}) is pinned at {version}")
    assert not problems, f"{lock.name}: {'; '.join(problems)}; {STALE}"


def test_the_runtime_lock_pins_what_the_full_lock_pins() -> None:
    full, runtime = pins(FULL_LOCK), pins(RUNTIME_LOCK)

    differing = {name: (version, full.get(name)) for name, version in runtime.items()}
    assert {n: v for n, v in differing.items() if v[0] != v[1]} == {}, STALE
    assert "pytest" not in runtime, "dev tools in requirements-runtime.lock; " + STALE


@pytest.mark.parametrize("lock", [FULL_LOCK, RUNTIME_LOCK])
def test_every_pin_carries_a_hash(lock: Path) -> None:
    entries = re.split(r"\n(?=[A-Za-z0-9])", lock.read_text())
    unhashed = [e.split()[0] for e in entries if PIN.match(e) and "--hash=sha256:" not in e]

    assert not unhashed, f"{lock.name}: no hash for {unhashed}; {STALE}"
