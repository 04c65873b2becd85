"""Which recorded reshard is current, whether it can be aborted, and what ``status`` suggests."""

from __future__ import annotations

import pytest

from shardctl.ring.hashing import Ring
from shardctl.state.inflight import ReshardRecord, current, may_abort, reshard_operation
from shardctl.state.plan import MoveSize, Phase, make_plan


def _record(phase: Phase, *, flipped: bool = False, plan_id: int = 3) -> ReshardRecord:
    old, new = Ring(["a", "b"]), Ring(["a", "b", "c"])
    plan = make_plan(plan_id, 5, old, new, [MoveSize(10, 100) for _ in old.moves_to(new)])
    return ReshardRecord.from_json(
        {"id": plan_id, "phase": phase.value, "flipped": flipped, "plan": plan.to_json()}
    )


def test_abort_is_possible_until_the_ring_flips_whatever_the_phase() -> None:
    assert may_abort(Phase.COPYING, flipped=False)
    assert may_abort(Phase.CUTTING_OVER, flipped=False)
    assert not may_abort(Phase.CUTTING_OVER, flipped=True)
    assert not may_abort(Phase.CLEANING, flipped=True)
    assert not may_abort(Phase.DONE, flipped=False)
    assert not may_abort(Phase.ABORTED, flipped=False)


@pytest.mark.parametrize(
    "phase", [Phase.PLANNED, Phase.CAPTURING, Phase.COPYING, Phase.VERIFYING, Phase.CUTTING_OVER]
)
def test_status_suggests_abort_exactly_when_abort_is_allowed(phase: Phase) -> None:
    # A cut-over that stopped before it flipped the ring can still be aborted: say so.
    operation = reshard_operation(_record(phase), {})
    assert operation is not None
    assert operation.command == "shardctl rebalance --resume (or --abort)"


@pytest.mark.parametrize("phase", [Phase.CUTTING_OVER, Phase.CLEANING])
def test_after_the_flip_status_suggests_only_resume(phase: Phase) -> None:
    operation = reshard_operation(_record(phase, flipped=True), {})
    assert operation is not None
    assert operation.command == "shardctl rebalance --resume"


def test_finished_reshards_are_not_in_flight() -> None:
    assert reshard_operation(_record(Phase.DONE), {}) is None
    assert reshard_operation(_record(Phase.ABORTED), {}) is None


def test_the_current_reshard_is_the_newest_then_the_most_advanced() -> None:
    behind, ahead = _record(Phase.COPYING), _record(Phase.VERIFYING)
    older_done = _record(Phase.CLEANING, plan_id=2)
    assert current([behind, older_done, ahead]) is ahead
    assert current([ahead, behind]) is ahead
    aborted = _record(Phase.ABORTED)
    assert current([_record(Phase.CUTTING_OVER), aborted]) is aborted
    assert current([older_done, _record(Phase.PLANNED, plan_id=4)]).phase is Phase.PLANNED  # type: ignore[union-attr]
    assert current([]) is None
