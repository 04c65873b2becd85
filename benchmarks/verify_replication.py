"""How long ``verify-replication`` takes on a healthy cluster, against the cost of a bare probe.

    DOCKER_HOST=... python benchmarks/verify_replication.py [--shards 4] [--rounds 7]

Brings up a throw-away cluster (``--shards`` x 1 replica, the test image), then runs
interleaved rounds of, in one process:

- baseline: one fresh connection and ``SELECT 1`` per node, all nodes in parallel (the floor
  of any probe: TCP, SCRAM authentication, one round trip);
- ``observe``: the health facts ``status`` shows (Docker listing + one query per node);
- ``verify``: every check including the canary write and its arrival on every replica;
- ``verify --deep``: plus row counts and checksums of the sharded tables (1000 rows/shard);

and, in a subprocess each, the CLI as CI runs it (``python -m shardctl verify-replication``)
next to ``python -m shardctl --version`` (interpreter and import time). Prints medians and
ratios to the baseline, then removes the cluster with its volumes.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable

from _cluster import baseline, cli, temp_cluster

from shardctl.db import pg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()

    with temp_cluster(shards=args.shards, replicas=1) as cluster:
        for primary in cluster.topology.primaries():
            with pg.connect(primary, cluster.credentials(), "app") as conn:
                conn.execute(
                    "INSERT INTO users (id, first_name) SELECT gen_random_uuid(), 'u' || i "
                    "FROM generate_series(1, 1000) i"
                )
        path = str(cluster.topology.path)

        def observe() -> None:
            cluster.observe()

        def verify(deep: bool) -> Callable[[], None]:
            def run() -> None:
                report = cluster.verify_replication(deep=deep)
                if not report.ok:
                    raise RuntimeError("; ".join(c.line for c in report.failures))

            return run

        cases: dict[str, Callable[[], None]] = {
            "baseline (SELECT 1 per node)": baseline(cluster),
            "observe (status facts)": observe,
            "verify": verify(False),
            "verify --deep": verify(True),
            "cli: shardctl --version": cli("--version"),
            "cli: verify-replication": cli("verify-replication", "-f", path),
            "cli: verify-replication --deep": cli("verify-replication", "-f", path, "--deep"),
        }
        times: dict[str, list[float]] = {name: [] for name in cases}
        for case in cases.values():  # warm-up: first connections, canary table
            case()
        for _ in range(args.rounds):
            for name, case in cases.items():
                t = time.perf_counter()
                case()
                times[name].append(time.perf_counter() - t)

    base = statistics.median(times["baseline (SELECT 1 per node)"])
    print(
        f"{args.shards} shards x 1 replica, {args.rounds} rounds, median; "
        f"{platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} cpus"
    )
    for name, samples in times.items():
        median = statistics.median(samples)
        print(f"  {name:<34} {median * 1000:8.0f} ms  {median / base:6.1f}x baseline")


if __name__ == "__main__":
    main()
