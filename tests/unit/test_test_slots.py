"""The test suite's own guards, without Docker: two test processes on one machine never get
the same ports or simulated-host slot (tests/clusters.py), and a CI run in which an integration
test did not run fails (``SHARDCTL_STRICT_RUN``, tests/conftest.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

HOLDER = """
import json, os, sys
os.getpid = lambda: 1  # every process starts its search at the same cell: only the locks differ
from tests import clusters
print(json.dumps({"base": clusters.free_base_port(30), "slot": clusters.host_slot()}), flush=True)
sys.stdin.read()  # hold the reservations until the test lets go
"""


def holder(locks: Path) -> subprocess.Popen[str]:
    """A process that reserves ports and a host slot, reports them, and holds them."""
    return subprocess.Popen(
        [sys.executable, "-c", HOLDER],
        cwd=REPO,
        env={**os.environ, "SHARDCTL_TEST_LOCKS": str(locks), "PYTHONPATH": str(REPO)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def reserved(process: subprocess.Popen[str]) -> dict[str, int]:
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line, "the holder died before reserving"
    return dict(json.loads(line))


def test_two_test_processes_at_once_get_distinct_ports_and_host_slots(tmp_path: Path) -> None:
    first = holder(tmp_path)
    second = holder(tmp_path)
    try:
        a, b = reserved(first), reserved(second)
    finally:
        for process in (first, second):
            process.communicate(timeout=30)
    assert a["slot"] != b["slot"], (a, b)
    # Each base owns [base, base + 30) and the same above the pooler offset: no overlap.
    assert abs(a["base"] - b["base"]) >= 30, (a, b)
    # Let go at exit: a later process gets the first slot again.
    third = holder(tmp_path)
    try:
        assert reserved(third)["slot"] == min(a["slot"], b["slot"])
    finally:
        third.communicate(timeout=30)


STRICT_SUITE = """
import pytest

pytestmark = pytest.mark.integration


def test_ran() -> None:
    pass


def test_skipped() -> None:
    pytest.skip("the engine is missing")
"""


STRICT_SUITE_ALL_RUN = STRICT_SUITE.replace('pytest.skip("the engine is missing")', "pass")


def strict_run(
    folder: Path, *args: str, suite: str = STRICT_SUITE
) -> subprocess.CompletedProcess[str]:
    """pytest under ``SHARDCTL_STRICT_RUN=1`` on a two-test integration module, with the repo's
    strict-run hook (tests/conftest.py) loaded as a plugin."""
    (folder / "test_strict.py").write_text(suite, encoding="utf-8")
    (folder / "pytest.ini").write_text("[pytest]\nmarkers = integration\n", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider",
         "-q", str(folder / "test_strict.py"), *args],
        cwd=folder,
        env={**env, "SHARDCTL_STRICT_RUN": "1", "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )  # fmt: skip


PARALLEL = pytest.mark.parametrize(
    "workers", [(), ("-n", "2", "--dist", "loadfile")], ids=["serial", "xdist"]
)
"""Both ways CI runs the integration tests: one process, or xdist workers (the controller then
collects and runs nothing itself, and must still see what every worker did)."""


@PARALLEL
def test_a_strict_run_fails_when_an_integration_test_is_skipped(
    tmp_path: Path, workers: tuple[str, ...]
) -> None:
    done = strict_run(tmp_path, *workers)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "strict run: 1 of 2 integration tests did not run" in done.stdout, done.stdout
    assert "test_skipped" in done.stdout


@PARALLEL
def test_a_strict_run_fails_when_an_integration_test_is_deselected(
    tmp_path: Path, workers: tuple[str, ...]
) -> None:
    done = strict_run(tmp_path, *workers, "-k", "not test_skipped")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "strict run: 1 of 2 integration tests did not run" in done.stdout, done.stdout


def test_a_strict_run_of_only_the_unit_tests_passes(tmp_path: Path) -> None:
    """The unit half of CI deselects every integration test by ``-m "not integration"``: that
    is the split, not an accident."""
    done = strict_run(tmp_path, "-m", "not integration")
    assert "strict run" not in done.stdout, done.stdout
    assert done.returncode == 5, done.stdout + done.stderr  # nothing collected: pytest's 5


@PARALLEL
def test_a_strict_run_in_which_every_integration_test_ran_passes(
    tmp_path: Path, workers: tuple[str, ...]
) -> None:
    """The other side of the checks above: in parallel, a worker ran only its share of the
    tests, and that alone must not fail the run."""
    done = strict_run(tmp_path, *workers, suite=STRICT_SUITE_ALL_RUN)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 passed" in done.stdout, done.stdout
    assert "strict run" not in done.stdout, done.stdout
