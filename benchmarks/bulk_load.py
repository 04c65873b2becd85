"""Bulk load rows/s against a raw COPY of the same rows into one primary, in the same run.

    python benchmarks/bulk_load.py [--rows N] [--repeat R] [--replicas K]

Brings up its own 2-shard cluster (test image) and removes it afterwards. Each round empties
``users`` on both primaries, then loads ``--rows`` fresh users twice: once with a raw COPY
(the same text rows and chunk size, one stream, into shard-0's primary: the baseline; once with
the rows generated beforehand, once generated as it goes, like the bulk loader), once
with ``shardctl.workload.bulk.bulk_load`` (keys grouped by ring owner, one COPY stream per shard in
parallel). Best of ``--repeat`` rounds; the ratio is bulk / raw.
"""

from __future__ import annotations

import argparse
import time

import psycopg
from _cluster import temp_cluster

from shardctl import Router
from shardctl.db import pg
from shardctl.ops.cluster import Cluster
from shardctl.workload.bulk import bulk_load, copy_statement, copy_text, generate
from shardctl.workload.target import Target, target

CHUNK = 20_000


def empty(cluster: Cluster) -> None:
    for node in cluster.topology.primaries():
        with pg.connect(node, cluster.credentials(), cluster.topology.spec.database) as conn:
            conn.execute("TRUNCATE users")
            conn.execute("CHECKPOINT")


def raw_copy(cluster: Cluster, table: Target, rows: int, *, pregenerated: bool) -> float:
    """Rows per second of one COPY stream into shard-0's primary, chunk by chunk."""
    node = cluster.topology.node("shard-0-primary")
    info = pg.conninfo(node, cluster.credentials(), cluster.topology.spec.database)
    made = list(generate(table, rows)) if pregenerated else None
    started = time.perf_counter()
    users = made if made is not None else list(generate(table, rows))
    with psycopg.connect(info, autocommit=True) as conn:
        for start in range(0, rows, CHUNK):
            data = copy_text(users[start : start + CHUNK])
            with conn.transaction(), conn.cursor().copy(copy_statement(table)) as copy:
                copy.write(data)
    return rows / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--replicas", type=int, default=1)
    args = parser.parse_args()
    best = {"raw": 0.0, "raw+gen": 0.0, "bulk": 0.0}
    with temp_cluster(replicas=args.replicas) as cluster, Router(cluster) as router:
        users = target(router)  # the same table and columns bulk_load writes
        for _ in range(args.repeat):
            empty(cluster)
            best["raw"] = max(best["raw"], raw_copy(cluster, users, args.rows, pregenerated=True))
            empty(cluster)
            best["raw+gen"] = max(
                best["raw+gen"], raw_copy(cluster, users, args.rows, pregenerated=False)
            )
            empty(cluster)
            report = bulk_load(router, args.rows, chunk=CHUNK)
            best["bulk"] = max(best["bulk"], report.rows_per_second)
        shares = {s: f"{n / args.rows:.1%}" for s, n in report.per_shard.items()}
    print(f"rows per round: {args.rows:,}, chunk {CHUNK:,}, best of {args.repeat} rounds")
    print(f"raw COPY, one primary, rows made beforehand: {best['raw']:>9,.0f} rows/s")
    print(f"raw COPY, one primary, rows made on the way: {best['raw+gen']:>9,.0f} rows/s")
    print(f"bulk_load, one COPY stream per shard:        {best['bulk']:>9,.0f} rows/s")
    print(
        f"ratio bulk / raw: {best['bulk'] / best['raw']:.2f} (rows made beforehand), "
        f"{best['bulk'] / best['raw+gen']:.2f} (made on the way); last split: {shares}"
    )


if __name__ == "__main__":
    main()
