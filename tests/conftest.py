"""Shared test set-up: where the repo is."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

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


WORKERS_WANTED = pytest.StashKey[set[str]]()
"""On the xdist controller: the integration tests the workers collected (each collects all)."""
WORKERS_DESELECTED = pytest.StashKey[set[str]]()
"""On the xdist controller: the integration tests the workers deselected."""


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """xdist's controller, as each worker ends: keep what the worker collected and deselected
    (see :func:`pytest_sessionfinish`; a worker that crashed sends nothing, its peers do)."""
    output: dict[str, Any] = getattr(node, "workeroutput", None) or {}
    config: pytest.Config = node.config
    config.stash.setdefault(WORKERS_WANTED, set()).update(output.get("shardctl_integration", []))
    config.stash.setdefault(WORKERS_DESELECTED, set()).update(output.get("shardctl_deselected", []))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Under ``SHARDCTL_STRICT_RUN=1`` (CI): fail a run in which fewer integration tests ran
    than were collected for it (a skip, a deselection by accident, a crash of a worker).

    Only the unit-test half of the run (``-m "not integration"``) may deselect them.

    In parallel (pytest-xdist) the controller judges: it runs no test and collects none, so each
    worker hands it, in ``workeroutput``, the integration tests it collected and deselected (every
    worker collects the whole run), and the controller's reporter has every test's report."""
    config = session.config
    if os.environ.get("SHARDCTL_STRICT_RUN") != "1" or config.option.collectonly:
        return
    wanted = {item.nodeid for item in session.items if item.get_closest_marker("integration")}
    deselected_here: list[str] = config.stash.get(DESELECTED, [])
    deselected = set(deselected_here)
    workeroutput: dict[str, Any] | None = getattr(config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker: it ran only its share
        workeroutput["shardctl_integration"] = sorted(wanted)
        workeroutput["shardctl_deselected"] = sorted(deselected)
        return
    by_workers: set[str] = config.stash.get(WORKERS_WANTED, set())
    deselected_by_workers: set[str] = config.stash.get(WORKERS_DESELECTED, set())
    wanted |= by_workers
    deselected |= deselected_by_workers
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return
    ran = {
        report.nodeid
        for key in ("passed", "failed", "error")
        for report in reporter.stats.get(key, [])
        if getattr(report, "when", "call") == "call" or key == "error"
    }
    if config.option.markexpr != "not integration":
        wanted |= deselected
    missing = sorted(wanted - ran)
    if missing:
        reporter.write_line(
            f"strict run: {len(missing)} of {len(wanted)} integration tests did not run: "
            + ", ".join(missing[:10]),
            red=True,
        )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
