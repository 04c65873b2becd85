"""Test-only entry point: ``remove-shard`` that dies abruptly, as if killed, after one step.

    python tests/integration/kill_remove_after.py TOPOLOGY SHARD STEP [--resume]

STEP is a reshard phase (``capturing`` ... ``cleaning``: dies once that phase's work is done and
the next is recorded) or a decommission step (``topology``: the shard's entry is gone from the
file; ``containers``: its containers too). Exits with status 137 (SIGKILL's), no clean-up at
all, through the library's hooks (``Rebalancer(after_phase=...)``, ``remove_shard(after_step=...)``)
as ``kill_after_phase.py`` does for ``rebalance``.
"""

from __future__ import annotations

import os
import sys

from shardctl.errors import UsageError
from shardctl.ops.cluster import Cluster
from shardctl.ops.reshard.coordinator import Rebalancer
from shardctl.ops.reshard.leaving import remove_shard
from shardctl.state.plan import Phase

KILLED = 137


def main(path: str, shard: str, step: str, *flags: str) -> int:
    """Remove ``shard`` until ``step`` is done, then die; 1 if it ended some other way."""

    def die(done: object) -> None:
        if str(done) == step:
            os._exit(KILLED)

    with Cluster.load(path) as cluster:
        cluster.follow_roles()
        rebalancer = Rebalancer(cluster, after_phase=lambda phase: die(Phase(phase).value))
        with rebalancer.exclusive(busy=UsageError):
            removal = remove_shard(
                cluster, rebalancer, shard, keep_volumes=False, resume="--resume" in flags,
                after_step=die,
            )  # fmt: skip
    print(f"removal of {shard} ended ({removal.containers}), never after {step}")
    return 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
