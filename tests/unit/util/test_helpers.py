"""The one retry helper, the one fan-out, and the import direction of the fence (no database)."""

from __future__ import annotations

import ast
import threading
import time
from pathlib import Path

import pytest

from shardctl.state import fence
from shardctl.util import fanout
from shardctl.util.waiting import retrying

PACKAGE = Path(fence.__file__).parent.parent


class Flaky(Exception):
    pass


def failing(times: int, calls: list[int]) -> int:
    calls.append(1)
    if len(calls) <= times:
        raise Flaky(f"try {len(calls)}")
    return len(calls)


def test_retrying_redoes_the_step_until_it_succeeds() -> None:
    calls: list[int] = []
    closed: list[int] = []
    result = retrying(
        lambda: failing(2, calls),
        retry_on=Flaky,
        attempts=3,
        after_failure=lambda: closed.append(1),
    )
    assert result == 3
    assert len(closed) == 2


def test_retrying_raises_the_last_error_after_its_attempts() -> None:
    calls: list[int] = []
    with pytest.raises(Flaky, match="try 3"):
        retrying(lambda: failing(5, calls), retry_on=Flaky, attempts=3)
    assert len(calls) == 3


def test_retrying_gives_up_after_its_patience_with_the_callers_error() -> None:
    calls: list[int] = []
    closed: list[int] = []
    with pytest.raises(RuntimeError, match="gave up: try"):
        retrying(
            lambda: failing(1000, calls),
            retry_on=Flaky,
            patience=0.5,
            pause=0.05,
            after_failure=lambda: closed.append(1),
            on_give_up=lambda exc: RuntimeError(f"gave up: {exc}"),
        )
    assert 2 <= len(calls) < 40  # tried again within its patience, and stopped
    assert len(closed) == len(calls)  # the last failure too


def test_retrying_lets_other_errors_through_at_once() -> None:
    calls: list[int] = []

    def step() -> None:
        calls.append(1)
        raise KeyError("other")

    with pytest.raises(KeyError):
        retrying(step, retry_on=Flaky, attempts=5)
    assert len(calls) == 1


def test_gather_runs_at_once_and_returns_errors() -> None:
    barrier = threading.Barrier(3, timeout=5)

    def ok(n: int) -> int:
        barrier.wait()  # only passes when all three run at the same time
        return n

    def bad() -> int:
        barrier.wait()
        raise Flaky("bad")

    results = fanout.gather({"a": lambda: ok(1), "b": bad, "c": lambda: ok(3)})
    assert list(results) == ["a", "b", "c"]
    assert results["a"] == 1 and results["c"] == 3
    assert isinstance(results["b"], Flaky)


def test_gather_does_not_wait_for_a_hung_task() -> None:
    release = threading.Event()
    started = time.monotonic()
    results = fanout.gather({"hung": lambda: release.wait(10), "fast": lambda: True}, timeout=0.2)
    release.set()
    assert time.monotonic() - started < 5
    assert isinstance(results["hung"], TimeoutError)
    assert results["fast"] is True


def test_each_raises_the_first_error_in_task_order() -> None:
    def fail(message: str) -> int:
        raise Flaky(message)

    with pytest.raises(Flaky, match="first"):
        fanout.each({"a": lambda: 1, "b": lambda: fail("first"), "c": lambda: fail("second")})
    assert fanout.each({"a": lambda: 1, "b": lambda: 2}) == {"a": 1, "b": 2}


def imports_of(path: Path) -> set[str]:
    """Every shardctl module ``path`` imports (``from shardctl import x`` counts as shardctl.x)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name.startswith("shardctl")}


def test_the_fence_and_the_coordinator_do_not_reach_up() -> None:
    low = imports_of(PACKAGE / "state" / "fence.py")
    assert not {m for m in low if m.startswith("shardctl.ops")}
    coordinator = imports_of(PACKAGE / "ops" / "reshard" / "coordinator.py")
    assert not {m for m in coordinator if m.startswith("shardctl.ops.cluster")}
