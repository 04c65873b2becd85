"""A grow's planning and verification on one source, against a raw COPY of the moving rows.

    python benchmarks/reshard_planning.py [--rows 250000] [--rounds 3]

One shard holds what one source holds at 1M users on 4 shards (an md5 ring with 150 virtual
nodes): ``--rows`` keys it owns. The moves are those it gives a fifth shard. In interleaved
rounds, each timed alone:

- ``raw copy``: one binary ``COPY (SELECT … the moving ranges) TO STDOUT | COPY … FROM STDIN``
  into an empty second shard, the source indexed as for a reshard's copy: the baseline, a copy
  paying for nothing of shardctl's;
- ``count, full scan``: ``transfer.sizes`` without the index, as planning counted before (and
  as ``rebalance --plan`` still does): one scan hashing every row's position;
- ``index build``: ``CREATE INDEX CONCURRENTLY`` of the ring position (capture built it after
  planning; a run now builds it before planning);
- ``count, index``: ``transfer.sizes(indexed=True)``, planning's count now;
- ``checksum, width_bucket``: verification's source side before: the moving ranges' rows by
  index range scans, each row's position hashed again to find its move (``width_bucket``);
- ``checksum, per range``: ``transfer.fingerprints`` now, an aggregate per range.

Best of the rounds each, and each as a multiple of the raw copy.
"""

from __future__ import annotations

import argparse
import time
import uuid
from collections.abc import Callable

from _cluster import source_and_target, temp_cluster
from psycopg import sql

from shardctl.config.schema import TableSpec
from shardctl.db import digest
from shardctl.ops.reshard import transfer
from shardctl.ring.hashing import Move, Ring
from shardctl.ring.sql import position


def old_fingerprints(conn: transfer.Conn, table: TableSpec, moves: list[Move]) -> list[int]:
    """Verification's source side as it was: rows of the ranges, grouped by ``width_bucket``."""
    thresholds, bucket_of = transfer._bounds(moves)
    query = sql.SQL(
        "SELECT pg_catalog.width_bucket({pos}, %s::text[]) AS b, {agg} FROM ({rows}) t GROUP BY b"
    ).format(pos=position(table.key), agg=digest.CHECKSUM, rows=transfer.in_spans(table, moves))
    result = [0 for _ in moves]
    for bucket, count, _ in conn.execute(query, (thresholds,)):
        if bucket in bucket_of:
            result[bucket_of[bucket]] = int(count)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=250_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    ring = Ring([f"shard-{i}" for i in range(4)], vnodes=150, algorithm="md5")
    with temp_cluster(shards=2, replicas=0) as cluster:
        source_node, target_node = cluster.topology.primaries()
        moves = [
            Move(m.start, m.end, source_node.shard, target_node.shard)
            for m in ring.moves_to(ring.with_node("shard-4"))
            if m.source == "shard-0"
        ]
        with source_and_target(cluster) as pair:
            src, dst, table = pair.src, pair.dst, pair.table
            print(f"# loading {args.rows:,} rows that shard-0 owns on {source_node.shard}")
            loaded = 0
            with src.cursor().copy(
                "COPY users (id, first_name, last_name, email) FROM STDIN"
            ) as copy:
                while loaded < args.rows:
                    key = uuid.uuid4()
                    if ring.node_for(key) == "shard-0":
                        copy.write_row((key, f"first{loaded}", f"last{loaded}", f"u{loaded}@x.org"))
                        loaded += 1
            src.execute("VACUUM ANALYZE users")
            select = sql.SQL("COPY ({}) TO STDOUT (FORMAT binary)").format(
                transfer.in_spans(table, moves)
            )

            def raw() -> int:
                with dst.cursor() as cur:
                    with (
                        src.cursor().copy(select) as out,
                        cur.copy("COPY users FROM STDIN (FORMAT binary)") as into,
                    ):
                        for block in out:
                            into.write(block)
                    return cur.rowcount

            def empty_target() -> None:
                transfer.ensure_position_index(src, table)  # as for a reshard's copy
                dst.execute("TRUNCATE users")
                # The baseline must not pay for shardctl's guard trigger, which `up` installs.
                dst.execute("SET session_replication_role = replica")

            def unindexed() -> None:
                transfer.drop_position_index(src, table)

            def indexed() -> None:
                transfer.ensure_position_index(src, table)

            def build_only() -> int:
                transfer.ensure_position_index(src, table)
                return -1  # counts nothing

            def moving_rows() -> int:
                return sum(r for r, _ in transfer.sizes(src, table, moves, indexed=True))

            # name: (untimed set-up, timed work returning the moving rows it saw)
            ways: dict[str, tuple[Callable[[], None], Callable[[], int]]] = {
                "raw copy": (empty_target, raw),
                "count, full scan": (unindexed, lambda: sum(
                    r for r, _ in transfer.sizes(src, table, moves))),
                "index build": (unindexed, build_only),
                "count, index": (indexed, moving_rows),
                "checksum, width_bucket": (indexed, lambda: sum(
                    old_fingerprints(src, table, moves))),
                "checksum, per range": (indexed, lambda: sum(
                    f.rows for f in transfer.fingerprints(src, table, moves))),
            }  # fmt: skip
            best = dict.fromkeys(ways, float("inf"))
            counts: dict[str, int] = {}
            for _ in range(args.rounds):
                for name, (setup, work) in ways.items():
                    setup()
                    started = time.perf_counter()
                    counts[name] = work()
                    best[name] = min(best[name], time.perf_counter() - started)
            dst.execute("RESET session_replication_role")
            counts.pop("index build")
            moving = counts["count, index"]
            assert counts["count, full scan"] == moving == counts["checksum, per range"]
            assert counts["checksum, width_bucket"] == moving == counts["raw copy"]
            print(f"{len(moves)} moves, {moving:,} of {args.rows:,} rows moving")
            for name, seconds in best.items():
                print(f"  {name:<24} {seconds:7.3f}s  {seconds / best['raw copy']:5.2f}x raw copy")
            before = best["count, full scan"] + best["index build"]
            after = best["index build"] + best["count, index"]
            print(f"planning + index, before {before:.3f}s, after {after:.3f}s")


if __name__ == "__main__":
    main()
