"""1M users into the 4-shard example: per-shard counts and max/mean, as the seeds' table shows.

    python benchmarks/distribution_1m.py [--rows N] [--algorithm md5|balanced] [--replicas K]

Brings up a throw-away cluster shaped like ``topology.yaml`` (4 shards, the md5 ring with 150
virtual nodes unless told otherwise; no replicas by default, to spare a small machine), loads
``--rows`` users with the bulk loader, then runs ``distribution.measure`` (counted on the
servers) and prints rows per shard, the ring's expected share, max/mean, and both timings.
"""

from __future__ import annotations

import argparse
import time

from _cluster import temp_cluster

from shardctl import Router
from shardctl.health.distribution import measure
from shardctl.workload.bulk import bulk_load


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--algorithm", default="md5", choices=["md5", "balanced"])
    parser.add_argument("--replicas", type=int, default=0)
    args = parser.parse_args()
    ring = {"algorithm": args.algorithm, "vnodes": 150}
    with temp_cluster(shards=4, replicas=args.replicas, ring=ring) as cluster:
        with Router(cluster) as router:
            loaded = bulk_load(router, args.rows, seed=1)
        started = time.perf_counter()
        result = measure(cluster.topology, cluster.credentials())
        counted = time.perf_counter() - started
    mean = result.tables[0].rows / len(result.shards)
    print(f"{args.rows:,} users, 4 shards, ring {args.algorithm} (150 vnodes for md5)")
    print(f"bulk load: {loaded.seconds:.1f}s, {loaded.rows_per_second:,.0f} rows/s")
    print(f"distribution (counted on the servers): {counted:.2f}s")
    print(f"{'shard':<8} {'rows':>9} {'expected':>9} {'actual':>8} {'/mean':>6}")
    for row in result.shards:
        share = row.actual_share or 0.0
        print(
            f"{row.shard:<8} {row.rows:>9,} {row.expected_share:>9.2%} {share:>8.2%} "
            f"{row.rows / mean:>6.3f}"
        )
    print(f"max/mean {result.skew:.3f}, misplaced {result.misplaced}, dups {result.duplicates}")


if __name__ == "__main__":
    main()
