"""Reshard copy throughput against a raw COPY pipe between the same two containers.

    python benchmarks/reshard_copy.py [--rows 400000]

One shard holds every row; half of the circle (the upper half, as a move to a new shard would)
is copied to an empty second shard, alternately by a raw ``COPY ... TO STDOUT | COPY ... FROM
STDIN`` (binary, one stream) and by shardctl's ``transfer.copy_ranges`` over the plan's 50k-row
chunks (one move, so each is a batch of its own: a plain COPY, its progress row in its
transaction). Best of three each; prints rows/s and the ratio.
"""

from __future__ import annotations

import argparse
import time
import uuid

from _cluster import temp_cluster
from psycopg import sql

from shardctl.db import digest, pg
from shardctl.ops.reshard import transfer
from shardctl.ring.hashing import SPACE, Move, Span
from shardctl.state import ddl
from shardctl.state.plan import split


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=400_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--no-index", dest="index", action="store_false", help="without the ring position index"
    )
    args = parser.parse_args()
    with temp_cluster(shards=2, replicas=0) as cluster:
        source_node, target_node = cluster.topology.primaries()
        creds = cluster.credentials()
        table = cluster.topology.spec.tables[0]
        with (
            pg.connect(source_node, creds, "app") as src,
            pg.connect(target_node, creds, "app") as dst,
        ):
            for conn in (src, dst):
                digest.prepare(conn)
                ddl.install(conn, cluster.topology.spec.tables)
            print(f"# loading {args.rows:,} rows on {source_node.shard}")
            with src.cursor().copy(
                "COPY users (id, first_name, last_name, email) FROM STDIN"
            ) as copy:
                for i in range(args.rows):
                    copy.write_row((uuid.uuid4(), f"first{i}", f"last{i}", f"user{i}@example.com"))
            if args.index:
                transfer.ensure_position_index(src, table)
            src.execute("VACUUM ANALYZE users")
            move = Move(SPACE // 2, SPACE, source_node.shard, target_node.shard)
            where = transfer.range_predicate(table.key, move.start_hex, move.end_hex)
            counted = src.execute(
                sql.SQL("SELECT count(*) FROM users WHERE {}").format(where)
            ).fetchone()
            rows = int(str(counted[0])) if counted else 0
            chunks = split(0, move, rows, 50_000)
            raw_times: list[float] = []
            ours_times: list[float] = []
            for round_ in range(args.rounds):
                dst.execute("TRUNCATE users")
                # The baseline must not pay for shardctl's guard trigger, which `up` installs.
                dst.execute("SET session_replication_role = replica")
                started = time.perf_counter()
                with (
                    src.cursor().copy(
                        sql.SQL(
                            "COPY (SELECT * FROM users WHERE {}) TO STDOUT (FORMAT binary)"
                        ).format(where)
                    ) as out,
                    dst.cursor().copy("COPY users FROM STDIN (FORMAT binary)") as into,
                ):
                    for block in out:
                        into.write(block)
                raw_times.append(time.perf_counter() - started)
                dst.execute("RESET session_replication_role")

                dst.execute("TRUNCATE users")
                dst.execute("DELETE FROM shardctl.copied")
                started = time.perf_counter()
                copied = 0
                for chunk in chunks:  # one move: each batch is one 50k-row chunk
                    named = [(chunk.id, Span(chunk.start, chunk.end))]
                    result = transfer.copy_ranges(src, dst, table, named, reshard_id=round_)
                    copied += result.rows if result else 0
                ours_times.append(time.perf_counter() - started)
                assert copied == rows, (copied, rows)
            raw, ours = min(raw_times), min(ours_times)
            print(f"rows moved per run: {rows:,} ({len(chunks)} chunks)")
            print(f"raw COPY pipe      {rows / raw:>12,.0f} rows/s  ({raw:.2f} s)")
            print(f"shardctl copy      {rows / ours:>12,.0f} rows/s  ({ours:.2f} s)")
            print(f"ratio shardctl/raw {raw / ours:>12.2f}")


if __name__ == "__main__":
    main()
