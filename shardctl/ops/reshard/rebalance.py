"""What ``shardctl rebalance`` does, given the reshard in flight and the flags: one decision.

The CLI validates the flags (:class:`Flags`, before contacting the cluster), reads the current
reshard, asks :func:`decide`, and then only carries the decision out and renders it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from shardctl.errors import NothingToDo, ReshardingError, UsageError
from shardctl.ops.reshard.coordinator import State
from shardctl.state.plan import finished


class Action(StrEnum):
    """What a ``rebalance`` run does."""

    SHOW_PLAN = "show-plan"
    """``--plan``: the reshard in flight (its plan and where it stands), else a new plan."""
    ABORT = "abort"
    RESUME = "resume"
    START = "start"
    """Plan anew, record the plan and run it."""


@dataclass(frozen=True)
class Flags:
    """``rebalance``'s flags; UsageError when they contradict each other."""

    plan: bool = False
    resume: bool = False
    abort: bool = False
    yes: bool = False

    def __post_init__(self) -> None:
        """Refuse contradictory flags."""
        if sum((self.plan, self.resume, self.abort)) > 1:
            raise UsageError("choose one of --plan, --resume and --abort")
        if self.plan and self.yes:
            raise UsageError("--plan changes nothing; it takes no --yes")


@dataclass(frozen=True)
class Decision:
    """What to do, and the unfinished reshard it concerns (None: none is unfinished)."""

    action: Action
    running: State | None
    confirm: bool = False
    """Show the new plan and ask before starting it (a start without ``--yes``)."""


def decide(current: State | None, flags: Flags) -> Decision:
    """What ``rebalance`` with ``flags`` does while ``current`` is the latest reshard.

    NothingToDo for ``--resume``/``--abort`` with no reshard unfinished; ReshardingError for a
    new start while one is.
    """
    running = current if current is not None and not finished(current.phase) else None
    if flags.plan:
        return Decision(Action.SHOW_PLAN, running)
    if (flags.abort or flags.resume) and running is None:
        doing = "abort" if flags.abort else "resume"
        raise NothingToDo(f"nothing to {doing}: no reshard is running")
    if flags.abort:
        return Decision(Action.ABORT, running)
    if flags.resume:
        return Decision(Action.RESUME, running)
    if running is not None:
        raise ReshardingError(
            f"reshard {running.plan.id} is still {running.phase.value}: "
            "run `shardctl rebalance --resume` or `--abort`"
        )
    return Decision(Action.START, None, confirm=not flags.yes)
