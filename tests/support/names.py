"""Unique names for what tests create on the shared services."""

from __future__ import annotations

import uuid

import pytest


def unique_name(prefix: str = "t") -> str:
    """A consumer-name-safe unique identifier: ``prefix_<10 hex>``."""
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def module_prefix(request: pytest.FixtureRequest) -> str:
    """The requesting test module's name without ``test_``, to name what its tests create."""
    return str(request.module.__name__).rsplit(".", 1)[-1].removeprefix("test_")
