"""Test-only entry point: ``switchover`` that dies abruptly, as if killed, after one step.

    python tests/integration/kill_switchover_after.py TOPOLOGY SHARD STEP

Exits with status 137 (SIGKILL's), no clean-up at all, as soon as STEP (a
:class:`shardctl.ops.rolechange.Step`) is done. Fault injection lives here, in the tests, through
the
library's one hook for it (``RoleChanger(after_step=...)``), not in the CLI.
"""

from __future__ import annotations

import os
import sys

from shardctl.ops.cluster import Cluster
from shardctl.ops.rolechange import Step

KILLED = 137


def main(path: str, shard: str, step: str) -> int:
    """Switch ``shard`` over until ``step`` is done, then die; 1 if it ended some other way."""
    stop_after = Step(step)

    def die(done: Step) -> None:
        if done is stop_after:
            os._exit(KILLED)

    with Cluster.load(path) as cluster:
        cluster.role_changer(after_step=die).switchover(shard)
    print(f"switchover of {shard} finished, never after {step}")
    return 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
