"""The monitor's schedule: the pass that completes a failing primary's ``detect_seconds``."""

from __future__ import annotations

import math
from pathlib import Path

from shardctl.config.topology import parse
from shardctl.ops.cluster import Cluster
from shardctl.ops.monitor.events import Event
from shardctl.ops.monitor.loop import Monitor

TOPOLOGY = """
cluster: demo
tables: [{name: users, key: id}]
failover: {mode: automatic, detect_seconds: 5}
shards:
  - {name: shard-0}
  - {name: shard-1, failover: {mode: automatic, detect_seconds: 2}}
"""


def monitor(now: list[float]) -> Monitor:
    events: list[Event] = []
    topology = parse(TOPOLOGY, Path("topology.yaml"))
    return Monitor(Cluster(topology), emit=events.append, clock=lambda: now[0])


def test_nothing_failing_means_no_early_pass() -> None:
    assert math.isinf(monitor([100.0]).due())


def test_the_next_pass_is_when_the_first_failing_primary_is_due() -> None:
    now = [100.0]
    watching = monitor(now)
    watching.failing_since["shard-0"] = ("shard-0-primary", 99.0)  # due at 104
    watching.failing_since["shard-1"] = ("shard-1-primary", 99.5)  # due at 101.5
    assert watching.due() == 1.5
    now[0] = 102.0  # shard-1 is past due (decided, or reported, every regular pass)
    assert watching.due() == 2.0
    now[0] = 105.0  # both past due: no busy loop, the regular interval applies
    assert math.isinf(watching.due())
