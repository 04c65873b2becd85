"""What ``rebalance`` does given the reshard in flight and the flags (pure, no cluster)."""

from __future__ import annotations

import pytest

from shardctl.errors import NothingToDo, ReshardingError, UsageError
from shardctl.ops.reshard.coordinator import Report, State
from shardctl.ops.reshard.rebalance import Action, Flags, decide
from shardctl.ring.hashing import Ring
from shardctl.state.plan import MoveSize, Phase, make_plan


def _state(phase: Phase) -> State:
    old, new = Ring(["a", "b"]), Ring(["a", "b", "c"])
    plan = make_plan(4, 2, old, new, [MoveSize(1, 1) for _ in old.moves_to(new)])
    return State(plan, phase, False, Report())


@pytest.mark.parametrize(
    "flags",
    [dict(plan=True, resume=True), dict(resume=True, abort=True), dict(plan=True, yes=True)],
)
def test_contradictory_flags_are_usage_errors(flags: dict[str, bool]) -> None:
    with pytest.raises(UsageError):
        Flags(**flags)


def test_plan_shows_the_running_reshard_or_a_new_one() -> None:
    running = _state(Phase.COPYING)
    assert decide(running, Flags(plan=True)).action is Action.SHOW_PLAN
    assert decide(running, Flags(plan=True)).running is running
    assert decide(_state(Phase.DONE), Flags(plan=True)).running is None
    assert decide(None, Flags(plan=True)).action is Action.SHOW_PLAN


@pytest.mark.parametrize("current", [None, _state(Phase.DONE), _state(Phase.ABORTED)])
@pytest.mark.parametrize("flags", [Flags(resume=True), Flags(abort=True)])
def test_resume_or_abort_with_nothing_running_is_nothing_to_do(
    current: State | None, flags: Flags
) -> None:
    with pytest.raises(NothingToDo):
        decide(current, flags)


def test_resume_and_abort_act_on_the_running_reshard() -> None:
    running = _state(Phase.CUTTING_OVER)
    assert decide(running, Flags(abort=True)).action is Action.ABORT
    assert decide(running, Flags(resume=True)).action is Action.RESUME


def test_a_new_run_is_refused_while_one_is_unfinished() -> None:
    with pytest.raises(ReshardingError, match="reshard 4 is still copying"):
        decide(_state(Phase.COPYING), Flags(yes=True))


def test_a_new_run_asks_unless_yes() -> None:
    assert decide(None, Flags()) == decide(_state(Phase.DONE), Flags())
    assert decide(None, Flags()).confirm
    assert decide(None, Flags()).action is Action.START
    assert not decide(None, Flags(yes=True)).confirm
