"""Ring lookups per second and the balanced ring's key spread.

    python benchmarks/ring_lookup.py [--keys N] [--repeat R]

Times ``node_for`` of the classic md5 ring (the baseline: the tests' oracle), of
``Ring(..., algorithm="md5")`` and of the balanced ring on the same pre-generated uuid4 strings,
in one process, best of ``--repeat`` interleaved rounds. Then counts keys per node for 4 nodes
and after ``with_node`` (5 nodes), and how many keys moved against the ideal 1/5.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shardctl.ring.hashing import Algorithm, Ring
from tests.unit.ring.test_ring import ClassicRing  # the oracle the tests hold md5 to: the baseline

NODES = ["shard-1", "shard-2", "shard-3", "shard-4"]
NEW_NODE = "shard-5"
VNODES = 150


def best_rates(
    lookups: dict[str, Callable[[object], str]], keys: list[str], repeat: int
) -> dict[str, float]:
    """Lookups per second of each ring: best of ``repeat`` rounds, rings interleaved per round."""
    best = dict.fromkeys(lookups, float("inf"))
    for _ in range(repeat):
        for name, lookup in lookups.items():
            start = time.perf_counter()
            for key in keys:
                lookup(key)
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: len(keys) / seconds for name, seconds in best.items()}


def spread(counts: Counter[str], nodes: Sequence[str]) -> str:
    """Per-node counts and max/mean on one line."""
    mean = sum(counts.values()) / len(nodes)
    per_node = "  ".join(f"{n}={counts[n]:,}" for n in nodes)
    return f"{per_node}  max/mean={max(counts[n] for n in nodes) / mean:.4f}"


def main() -> None:
    """Run the benchmark and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=1_000_000, help="uuid4 keys (default 1M)")
    parser.add_argument("--repeat", type=int, default=5, help="timed rounds, best kept")
    args = parser.parse_args()

    print(f"Python {platform.python_version()} on {platform.machine()}, {args.keys:,} uuid4 keys")
    keys = [str(uuid.uuid4()) for _ in range(args.keys)]

    classic = ClassicRing(NODES, VNODES)
    md5_ring = Ring(NODES, VNODES, Algorithm.MD5)
    balanced = Ring(NODES, VNODES, Algorithm.BALANCED)
    sample = keys[:10_000]
    assert all(md5_ring.node_for(k) == classic.get(k) for k in sample), "md5 ring != classic"

    rates = best_rates(
        {
            "classic md5 (baseline)": classic.get,
            "Ring md5": md5_ring.node_for,
            "Ring balanced": balanced.node_for,
        },
        keys,
        args.repeat,
    )
    base = rates["classic md5 (baseline)"]
    print(f"\nLookups, 4 nodes, {VNODES} vnodes (md5), best of {args.repeat}")
    print(f"{'ring':<24}{'lookups/s':>14}{'ns/lookup':>12}{'vs classic':>12}")
    for name, rate in rates.items():
        print(f"{name:<24}{rate:>14,.0f}{1e9 / rate:>12.0f}{rate / base:>11.2f}x")

    print("\nKeys per node")
    grown = {
        "balanced": (balanced, balanced.with_node(NEW_NODE)),
        "md5": (md5_ring, md5_ring.with_node(NEW_NODE)),
    }
    for name, (four, five) in grown.items():
        before = [four.node_for(k) for k in keys]
        after = [five.node_for(k) for k in keys]
        moved = Counter((a, b) for a, b in zip(before, after, strict=True) if a != b)
        total_moved = sum(moved.values())
        between_old = sum(c for (_, b), c in moved.items() if b != NEW_NODE)
        ideal = len(keys) / len(five.nodes)
        print(f"{name:<9} 4 nodes: {spread(Counter(before), four.nodes)}")
        print(f"{name:<9} 5 nodes: {spread(Counter(after), five.nodes)}")
        print(
            f"{name:<9} moved {total_moved:,} keys ({total_moved / len(keys):.2%}), "
            f"ideal 1/5 = {ideal:,.0f} ({total_moved / ideal:.4f}x ideal); "
            f"between old nodes: {between_old}"
        )
        shares = five.shares()
        print(
            f"{name:<9} exact shares, 5 nodes: min={min(shares.values()):.6f} "
            f"max={max(shares.values()):.6f}"
        )


if __name__ == "__main__":
    main()
