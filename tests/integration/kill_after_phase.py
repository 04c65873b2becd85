"""Test-only entry point: ``rebalance`` that dies abruptly, as if killed, after one phase.

    python tests/integration/kill_after_phase.py TOPOLOGY PHASE [--resume]

Starts a new reshard (or resumes the unfinished one) and exits with status 137 (SIGKILL's), no
clean-up at all, as soon as PHASE's work is done and the next phase is recorded. Fault
injection lives here, in the tests, through the library's one hook for it
(``Rebalancer(after_phase=...)``), not in the CLI.
"""

from __future__ import annotations

import os
import sys

from shardctl.ops.cluster import Cluster
from shardctl.ops.reshard.coordinator import Rebalancer
from shardctl.state.plan import Phase

KILLED = 137


def main(path: str, phase: str, *flags: str) -> int:
    """Run the reshard until ``phase`` is done, then die; 1 if it ended some other way."""
    stop_after = Phase(phase)

    def die(done: Phase) -> None:
        if done is stop_after:
            os._exit(KILLED)

    with Cluster.load(path) as cluster:
        rebalancer = Rebalancer(cluster, after_phase=die)
        with rebalancer.exclusive():
            state = rebalancer.resume() if "--resume" in flags else rebalancer.start()
            state = rebalancer.run(state)
    print(f"reshard {state.plan.id} ended at {state.phase.value}, never after {phase}")
    return 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
