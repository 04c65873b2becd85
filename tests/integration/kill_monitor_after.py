"""Test-only entry point: ``shardctl monitor`` that dies abruptly in a failover, after one step.

    python tests/integration/kill_monitor_after.py TOPOLOGY STEP

Exits with status 137 (SIGKILL's), no clean-up at all, as soon as the first failover it runs
has done STEP (a :class:`shardctl.ops.rolechange.Step`), through the library's one hook for
fault injection (``after_step``); 1 if it watched for 120 s without failing anything over.
"""

from __future__ import annotations

import os
import sys
import threading

from shardctl.ops.cluster import Cluster
from shardctl.ops.monitor.events import Event
from shardctl.ops.monitor.loop import Monitor
from shardctl.ops.rolechange import Step

KILLED = 137


def main(path: str, step: str) -> int:
    """Monitor the cluster of ``path`` until its first failover has done ``step``, then die."""
    stop_after = Step(step)

    def die(done: Step) -> None:
        if done is stop_after:
            os._exit(KILLED)

    def emit(event: Event) -> None:
        print(event.line(), file=sys.stderr, flush=True)

    stop = threading.Event()
    threading.Timer(120, stop.set).start()
    with Cluster.load(path) as cluster:
        Monitor(cluster, emit=emit, interval=0.5, after_step=die).run(stop)
    print(f"no failover reached {step}")
    return 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
