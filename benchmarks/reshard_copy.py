"""Reshard copy throughput against a raw COPY pipe of the same rows between the same containers.

    python benchmarks/reshard_copy.py [--rows 600000] [--shape removal|half] [--rounds 3]

One shard holds every row, with the ring-position index a reshard builds; the rows of some
ranges go to an empty second shard, in interleaved rounds, three ways:

- ``raw``: one binary ``COPY (SELECT … those ranges) TO STDOUT | COPY … FROM STDIN``, the guard
  trigger skipped, so the baseline pays for nothing of shardctl's;
- ``per chunk``: ``transfer.copy_ranges`` once per chunk of the plan, as ``rebalance`` copied
  before batching (a transaction, an emptiness probe and a progress row each);
- ``batched``: ``transfer.copy_ranges`` over the plan's batches (``Plan.batches``, 50k rows),
  as ``rebalance`` and ``remove-shard`` copy now.

``--shape removal`` (the default) copies what one (source, target) pair of ``remove-shard`` of
one of 5 shards copies on an md5 ring with 150 virtual nodes: ~30 small ranges. ``--shape
half`` copies the upper half of the circle (one move, 50k-row chunks). Best of the rounds each;
prints rows/s and the ratios to raw.
"""

from __future__ import annotations

import argparse
import time
import uuid
from collections.abc import Callable

from _cluster import source_and_target, temp_cluster
from psycopg import sql

from shardctl.ops.reshard import transfer
from shardctl.ring.hashing import SPACE, Move, Ring, Span
from shardctl.state.plan import Chunk, MoveSize, Plan, split, without_node


def shaped(shape: str, source: str, target: str) -> list[Move]:
    """The moves copied, named after the two shards of the benchmark's cluster."""
    if shape == "half":
        return [Move(SPACE // 2, SPACE, source, target)]
    ring = Ring([f"s{i}" for i in range(5)], vnodes=150, algorithm="md5")
    moves = ring.moves_to(without_node(ring, "s2"))
    return [Move(m.start, m.end, source, target) for m in moves if m.target == "s0"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=600_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--shape", choices=("removal", "half"), default="removal")
    args = parser.parse_args()
    with temp_cluster(shards=2, replicas=0) as cluster:
        source_node, target_node = cluster.topology.primaries()
        with source_and_target(cluster) as pair:
            src, dst, table = pair.src, pair.dst, pair.table
            print(f"# loading {args.rows:,} rows on {source_node.shard}")
            with src.cursor().copy(
                "COPY users (id, first_name, last_name, email) FROM STDIN"
            ) as copy:
                for i in range(args.rows):
                    copy.write_row((uuid.uuid4(), f"first{i}", f"last{i}", f"user{i}@example.com"))
            for conn in (src, dst):
                transfer.ensure_position_index(conn, table)
            src.execute("VACUUM ANALYZE users")
            moves = shaped(args.shape, source_node.shard, target_node.shard)
            sizes = [MoveSize(*size) for size in transfer.sizes(src, table, moves)]
            chunks = [c for i, m in enumerate(moves) for c in split(i, m, sizes[i].rows, 50_000)]
            ring = Ring([source_node.shard], vnodes=1)  # unused by batches
            plan = Plan(0, 0, ring, ring, tuple(moves), tuple(sizes), tuple(chunks))
            rows = plan.rows
            batches = plan.batches(source_node.shard, target_node.shard, 50_000)
            select = sql.SQL("COPY ({}) TO STDOUT (FORMAT binary)").format(
                transfer.in_spans(table, moves)
            )

            def raw(round_: int) -> int:
                # The baseline must not pay for shardctl's guard trigger, which `up` installs.
                dst.execute("SET session_replication_role = replica")
                with (
                    src.cursor().copy(select) as out,
                    dst.cursor().copy("COPY users FROM STDIN (FORMAT binary)") as into,
                ):
                    for block in out:
                        into.write(block)
                dst.execute("RESET session_replication_role")
                return rows

            def ours(groups: list[tuple[Chunk, ...]]) -> Callable[[int], int]:
                def run(round_: int) -> int:
                    copied = 0
                    for group in groups:
                        named = [(f"users:{c.id}", Span(c.start, c.end)) for c in group]
                        result = transfer.copy_ranges(src, dst, table, named, reshard_id=round_)
                        copied += result.rows if result else 0
                    return copied

                return run

            ways: dict[str, Callable[[int], int]] = {
                "raw": raw,
                "per chunk": ours([(c,) for c in chunks]),
                "batched": ours(list(batches)),
            }
            best = dict.fromkeys(ways, float("inf"))
            for round_ in range(args.rounds):
                for name, way in ways.items():
                    dst.execute("TRUNCATE users")
                    dst.execute("DELETE FROM shardctl.copied")
                    started = time.perf_counter()
                    copied = way(round_)
                    best[name] = min(best[name], time.perf_counter() - started)
                    assert copied == rows, (name, copied, rows)
            print(
                f"{args.shape}: {rows:,} rows in {len(moves)} ranges, {len(chunks)} chunks, "
                f"{len(batches)} batches; best of {args.rounds}"
            )
            for name, seconds in best.items():
                print(
                    f"{name:<10} {rows / seconds:>10,.0f} rows/s ({seconds:.2f} s), "
                    f"{best['raw'] / seconds:.2f} of raw"
                )


if __name__ == "__main__":
    main()
