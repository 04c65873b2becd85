"""The 1M-user reshard of the example cluster, 4 -> 5 shards, under `shardctl load`.

    python benchmarks/reshard_1m.py [--rows 1000000] [--replicas 1] [--load-seconds 60]

Everything a user would run, in order, against a throw-away cluster shaped like topology.yaml
(4 shards x 1 replica, md5 ring with 150 virtual nodes): bulk-load the users, start
`shardctl load --ledger` in the background, `add-shard shard-4`, `rebalance --plan`,
`rebalance --yes`; when the load ends, `load --verify` the ledger, `distribution`, and
`verify-replication --deep`. Prints the plan against what moved, the copy rate, the total
time, the write pause at cut-over, and the load's own latency table; then the time of each
phase (the report's ``phase_seconds``) against `rebalance --yes` end to end, and, once the load
has ended, a raw binary COPY pipe of the new shard's rows (the same rows) into a scratch table
on shard-0, as the copy's baseline in the same run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _cluster import phase_lines, raw_pipe_seconds, temp_cluster

from shardctl import Router
from shardctl.config import topology
from shardctl.workload.bulk import bulk_load


def shardctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shardctl", *args], capture_output=True, text=True, check=False
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--load-seconds", type=float, default=60.0)
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()
    ring = {"algorithm": "md5", "vnodes": 150}
    with temp_cluster(shards=4, replicas=args.replicas, ring=ring) as cluster:
        path = str(cluster.topology.path)
        with Router(cluster) as router:
            loaded = bulk_load(router, args.rows, seed=1)
        print(f"bulk load: {args.rows:,} users in {loaded.seconds:.1f}s")
        ledger = Path(tempfile.mkdtemp()) / "ledger.jsonl"
        load = subprocess.Popen(
            [sys.executable, "-m", "shardctl", "load", "-f", path, "--workers",
             str(args.workers), "--duration", str(args.load_seconds), "--ledger", str(ledger)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        time.sleep(3)
        started = time.monotonic()
        added = shardctl("add-shard", "shard-4", "-f", path, "--replicas", str(args.replicas))
        assert added.returncode == 0, added.stderr
        added_at = time.monotonic()
        planned = shardctl("rebalance", "--plan", "-f", path, "-o", "json")
        assert planned.returncode == 0, planned.stderr
        plan = json.loads(planned.stdout)
        rebalance_at = time.monotonic()
        run = shardctl("rebalance", "--yes", "-f", path, "-o", "json")
        assert run.returncode == 0, run.stderr
        done_at = time.monotonic()
        report = json.loads(run.stdout)["report"]
        out, err = load.communicate()
        print(out)
        assert load.returncode == 0, err
        verified = shardctl("load", "-f", path, "--verify", str(ledger))
        distribution = shardctl("distribution", "-f", path, "-o", "json")
        deep = shardctl("verify-replication", "--deep", "-f", path)
        moved_rows = sum(m["rows"] for m in plan["moves"])
        print(f"plan: {len(plan['moves'])} ranges, {moved_rows:,} rows to move")
        rate = report["rows_copied"] / max(report["copy_seconds"], 1e-9)
        print(
            f"copied: {report['rows_copied']:,} rows, {report['bytes_copied']:,} bytes "
            f"in {report['copy_seconds']:.1f}s ({rate:,.0f} rows/s)"
        )
        repaired = len(report["keys_repaired"])
        print(f"keys re-synced {report['keys_resynced']:,}, repaired {repaired}")
        print(f"chunks copied: {report['chunk_paths']}")
        print(f"write pause at cut-over: {report['write_pause_ms']:.0f} ms")
        print(f"add-shard {added_at - started:.1f}s, rebalance {done_at - added_at:.1f}s, "
              f"removed {report['rows_cleaned']:,} rows from old owners")  # fmt: skip
        print(f"ledger verify exit {verified.returncode}: {verified.stdout.strip()[-300:]}")
        facts = json.loads(distribution.stdout)
        print(f"distribution exit {distribution.returncode}: misplaced {facts['misplaced']}, "
              f"duplicates {facts['duplicates']}, skew {facts['skew']:.3f}")  # fmt: skip
        print(f"verify-replication --deep exit {deep.returncode}")
        end_to_end = done_at - rebalance_at
        print(f"`rebalance --yes` end to end {end_to_end:.1f}s = "
              f"{end_to_end / max(report['copy_seconds'], 1e-9):.2f}x its copy time "
              f"({report['copy_seconds']:.1f}s); phases:")  # fmt: skip
        for line in phase_lines(report, end_to_end):
            print(line)
        grown = topology.load(cluster.topology.path)  # with shard-4, which add-shard wrote
        new, first = grown.shard_nodes("shard-4")[0], grown.primaries()[0]
        raw_rows, raw_seconds = raw_pipe_seconds(new, first, cluster.credentials())
        raw_rate = raw_rows / raw_seconds
        print(f"raw COPY pipe of shard-4's rows (load ended): {raw_rows:,} rows in "
              f"{raw_seconds:.2f}s ({raw_rate:,.0f} rows/s); the reshard's copy "
              f"{rate / raw_rate:.2f} of it")  # fmt: skip


if __name__ == "__main__":
    main()
