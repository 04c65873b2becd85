"""Shared test set-up: where the repo is."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

# Property tests judge correctness, not speed: a loaded 2-core CI machine must not fail them.
settings.register_profile("shardctl", deadline=None)
settings.load_profile("shardctl")

REPO = Path(__file__).resolve().parent.parent

# A user's shell may carry the quickstart's image override; tests choose their images themselves.
os.environ.pop("SHARDCTL_IMAGE", None)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test under tests/integration/ as ``integration`` (it needs a Docker engine).

    A module-level ``pytestmark`` in a conftest reaches no test module, so the mark follows the
    directory instead: ``pytest -m "not integration"`` then selects only tests that need nothing.
    """
    integration = REPO / "tests" / "integration"
    for item in items:
        if integration in item.path.parents:
            item.add_marker(pytest.mark.integration)
