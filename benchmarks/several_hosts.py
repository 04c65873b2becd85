"""``up`` of a 2 shards x 1 replica cluster on one engine against the same cluster split over two
engines (hosts), every replica on the other host than its primary, measured in the same run.

    python benchmarks/several_hosts.py [--rounds R]

Needs root: it starts two simulated hosts with scripts/second-host.sh (a Docker engine each, in
its own network namespace; the image is copied from $DOCKER_HOST) and removes them afterwards.
Both layouts run on namespace engines, so the only difference is the placement. Each round
brings up each layout from nothing (fresh volumes) and takes it down with its volumes; rounds
alternate which layout goes first.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from _cluster import REPO  # noqa: F401  (puts the repository on sys.path)

from shardctl.ops.cluster import Cluster
from tests.clusters import Host, simulated_hosts, split_topology


def timed_up(hosts: list[Host], *, one_engine: bool) -> float:
    """Seconds ``up`` takes, every replica streaming; the cluster is removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="shardctl-bench-hosts-"))
    cluster = Cluster.load(split_topology(folder, hosts, one_engine=one_engine))
    try:
        started = time.monotonic()
        cluster.up(timeout=300)
        return time.monotonic() - started
    finally:
        cluster.down(volumes=True)
        cluster.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print("# starting two simulated hosts")
    with simulated_hosts(2) as hosts:
        one: list[float] = []
        two: list[float] = []
        for round_ in range(args.rounds):
            order = [True, False] if round_ % 2 == 0 else [False, True]
            for one_engine in order:
                seconds = timed_up(hosts, one_engine=one_engine)
                (one if one_engine else two).append(seconds)
                layout = "one engine " if one_engine else "two engines"
                print(f"round {round_ + 1}: up on {layout}: {seconds:.2f} s")
        m1, m2 = statistics.median(one), statistics.median(two)
        print(f"median up, 2 x 1 on one engine:  {m1:.2f} s  (all: {sorted(one)})")
        print(f"median up, 2 x 1 over two hosts: {m2:.2f} s  (all: {sorted(two)})")
        print(f"two hosts / one engine: {m2 / m1:.2f}x")


if __name__ == "__main__":
    main()
