"""Shared test set-up: where the repo is."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# The helpers' asserts must survive like the tests' own (pytest rewrites only test modules).
pytest.register_assert_rewrite("tests.traffic", "tests.clusters")

from hypothesis import settings  # noqa: E402

# Property tests judge correctness, not speed: a loaded 2-core CI machine must not fail them.
settings.register_profile("shardctl", deadline=None)
settings.load_profile("shardctl")

REPO = Path(__file__).resolve().parent.parent

# A user's shell may carry the quickstart's image override; tests choose their images themselves.
os.environ.pop("SHARDCTL_IMAGE", None)


@pytest.hookimpl(tryfirst=True)  # before -m/-k deselect: they see the mark
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test under tests/integration/ as ``integration`` (it needs a Docker engine).

    A module-level ``pytestmark`` in a conftest reaches no test module, so the mark follows the
    directory instead: ``pytest -m "not integration"`` then selects only tests that need nothing.
    """
    integration = REPO / "tests" / "integration"
    for item in items:
        if integration in item.path.parents:
            item.add_marker(pytest.mark.integration)


DESELECTED = pytest.StashKey[list[str]]()
"""The integration tests a run collected and then deselected (-k, -m, --deselect)."""


def pytest_deselected(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("integration"):
            item.config.stash.setdefault(DESELECTED, []).append(item.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Under ``SHARDCTL_STRICT_RUN=1`` (CI): fail a run in which fewer integration tests ran
    than were collected for it (a skip, a deselection by accident, a crash of a worker).

    Only the unit-test half of the run (``-m "not integration"``) may deselect them."""
    if os.environ.get("SHARDCTL_STRICT_RUN") != "1" or session.config.option.collectonly:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return
    ran = {
        report.nodeid
        for key in ("passed", "failed", "error")
        for report in reporter.stats.get(key, [])
        if getattr(report, "when", "call") == "call" or key == "error"
    }
    wanted = {item.nodeid for item in session.items if item.get_closest_marker("integration")}
    if session.config.option.markexpr != "not integration":
        deselected: list[str] = session.config.stash.get(DESELECTED, [])
        wanted.update(deselected)
    missing = sorted(wanted - ran)
    if missing:
        reporter.write_line(
            f"strict run: {len(missing)} of {len(wanted)} integration tests did not run: "
            + ", ".join(missing[:10]),
            red=True,
        )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
