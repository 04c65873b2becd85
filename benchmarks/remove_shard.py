"""remove-shard: one of 5 shards holding N users, under live Router writes.

    python benchmarks/remove_shard.py [--rows 1000000] [--replicas 0] [--shard shard-2]

Bulk-loads N users into a throw-away 5-shard cluster (md5 ring, 150 virtual nodes), prints
`remove-shard --plan` (rows and bytes per source -> target), times a raw binary COPY pipe of
the leaving shard's rows into a scratch table on another shard (the baseline, same run, same
rows), then runs `remove-shard --yes` while 4 ledgered writers go through a Router. Prints plan
rows against copied rows, copy rows/s against the raw pipe, the time of each phase (the
report's ``phase_seconds``), the write pause at cut-over and the writers' worst latency, and
checks the ledger afterwards.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time

from _cluster import phase_lines, raw_pipe_seconds, temp_cluster

from shardctl import Router
from shardctl.workload.bulk import bulk_load
from tests.traffic import Writer, check_ledger


def shardctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shardctl", *args], capture_output=True, text=True, check=False
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--replicas", type=int, default=0)
    parser.add_argument("--shard", default="shard-2")
    args = parser.parse_args()
    ring = {"algorithm": "md5", "vnodes": 150}
    with temp_cluster(shards=5, replicas=args.replicas, ring=ring) as cluster:
        path = str(cluster.topology.path)
        with Router(cluster) as router:
            loaded = bulk_load(router, args.rows, seed=1)
        print(f"bulk load: {args.rows:,} users in {loaded.seconds:.1f}s")
        shown = shardctl("remove-shard", args.shard, "--plan", "-f", path, "-o", "json")
        assert shown.returncode == 0, shown.stderr
        plan = json.loads(shown.stdout)
        pairs: dict[tuple[str, str], list[int]] = {}
        for move in plan["moves"]:
            pair = pairs.setdefault((move["source"], move["target"]), [0, 0])
            pair[0] += move["rows"]
            pair[1] += move["bytes"]
        print(f"plan: {len(plan['moves'])} ranges, {plan['rows']:,} rows, {plan['bytes']:,} bytes")
        for (source, target), (rows, nbytes) in sorted(pairs.items()):
            print(f"  {source} -> {target}: {rows:,} rows, {nbytes:,} bytes")

        leaving = cluster.topology.shard_nodes(args.shard)[0]
        other = next(p for p in cluster.topology.primaries() if p.shard != args.shard)
        raw_rows, raw_seconds = raw_pipe_seconds(leaving, other, cluster.credentials())
        print(f"raw COPY pipe: {raw_rows:,} rows in {raw_seconds:.2f}s "
              f"({raw_rows / raw_seconds:,.0f} rows/s)")  # fmt: skip

        # The writers' keys: a sample of the loaded ones is not known here, so they insert,
        # update and delete their own (40% inserts), which also reach the leaving shard.
        router = Router(cluster, max_size=4, epoch_check_interval=0.5)
        writers = [Writer(router, seed, []) for seed in range(4)]
        stop = threading.Event()
        threads = [threading.Thread(target=w.run, args=(stop,)) for w in writers]
        for thread in threads:
            thread.start()
        time.sleep(2.0)
        # The same pipe again with the writers running, as the copy runs: the baseline under
        # the same conditions (the first one, alone, is what the machine can do at best).
        busy_rows, busy_seconds = raw_pipe_seconds(leaving, other, cluster.credentials())
        print(f"raw COPY pipe with the writers running: {busy_rows:,} rows in "
              f"{busy_seconds:.2f}s ({busy_rows / busy_seconds:,.0f} rows/s)")  # fmt: skip
        started = time.monotonic()
        run = shardctl("remove-shard", args.shard, "--yes", "-f", path, "-o", "json")
        elapsed = time.monotonic() - started
        time.sleep(1.0)
        stop.set()
        for thread in threads:
            thread.join()
        router.close()
        assert run.returncode == 0, run.stderr
        result = json.loads(run.stdout)
        report = result["report"]
        rate = report["rows_copied"] / max(report["copy_seconds"], 1e-9)
        ratio = rate / (raw_rows / raw_seconds)
        print(f"remove-shard: {elapsed:.1f}s in all; plan at start {result['plan']['rows']:,} "
              f"rows, copied {report['rows_copied']:,} rows in {report['copy_seconds']:.1f}s "
              f"({rate:,.0f} rows/s, {ratio:.2f} of the raw pipe alone, "
              f"{rate / (busy_rows / busy_seconds):.2f} of it with the writers)")  # fmt: skip
        print(f"phases (the command's {elapsed:.1f}s; the rest is start-up and decommission):")
        for line in phase_lines(report, elapsed):
            print(line)
        print(f"keys re-synced {report['keys_resynced']:,}, repaired "
              f"{len(report['keys_repaired'])}, chunks {report['chunk_paths']}")  # fmt: skip
        acknowledged = sum(w.acknowledged for w in writers)
        failed = sum(len(w.failed) for w in writers)
        print(f"write pause at cut-over: {report['write_pause_ms']:.0f} ms; writers: "
              f"{acknowledged:,} writes acknowledged, {failed} failed, worst latency "
              f"{max(w.max_latency for w in writers) * 1000:.0f} ms")  # fmt: skip
        reasons = sorted({reason[:160] for w in writers for reason in w.failed})
        for reason in reasons[:5]:
            print(f"  a write failed: {reason}")
        print(f"containers removed: {len(result['containers_removed'])}, "
              f"volumes removed: {len(result['volumes_removed'])}")  # fmt: skip
        stored, expected = check_ledger(cluster, writers, [])
        print(f"ledger: {expected:,} live keys of the writers all in place "
              f"({stored:,} rows in the cluster)")  # fmt: skip
        deep = shardctl("verify-replication", "--deep", "-f", path)
        print(f"verify-replication --deep exit {deep.returncode}")


if __name__ == "__main__":
    main()
