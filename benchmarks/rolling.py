"""The write pause of a rolling restart, per shard, against a switchover's in the same run.

    python benchmarks/rolling.py [--shards N] [--writers W]

Brings up its own N-shard x 1-replica cluster (test image; 4 by default) and removes it
afterwards. Writer threads insert through one ``Router`` all along, recording when each insert
started and ended. Then, in order:

1. baseline: a ``switchover`` of shard-0 and back (``Cluster.switchover``), twice;
2. ``Cluster.restart()``: the rolling restart of every shard (replicas, switchover, former
   primary), one shard at a time, timed end to end;
3. ``Cluster.restart(switchover=False)``: the same with every primary restarted in place.

Per shard, the write pause is the longest insert on that shard while the step ran (at the
Router, retries included) and the pause the library reports (fence to publish, or stop to the
first accepted write). The steady column is the longest insert in 1.5 s of traffic before.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

from _cluster import temp_cluster
from failover import Writes, writer  # the same ledgered writers as the failover benchmark

from shardctl import Router
from shardctl.ops.cluster import Cluster
from shardctl.state import catalog


def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.0f}"


def measure(cluster: Cluster, writes: Writes, shards: list[str]) -> None:
    time.sleep(1.0)
    steady_from = time.monotonic()
    time.sleep(1.5)
    steady = max(writes.longest(s, steady_from, time.monotonic()) for s in shards)
    print(f"steady: longest insert on any shard {ms(steady)} ms")

    router_pauses, server_pauses = [], []
    for _ in range(2):
        started = time.monotonic()
        change = cluster.switchover("shard-0")
        ended = time.monotonic()
        time.sleep(0.5)
        router_pauses.append(writes.longest("shard-0", started, ended))
        server_pauses.append(change.write_pause)
        cluster.switchover("shard-0", change.old_primary)
        time.sleep(0.5)
    print(
        "switchover (baseline): Router "
        + ", ".join(ms(p) for p in router_pauses)
        + " ms; server "
        + ", ".join(ms(p) for p in server_pauses)
        + " ms"
    )

    for label, switchover in (("rolling restart", True), ("in place (--no-switchover)", False)):
        started = time.monotonic()
        rolls = cluster.restart(switchover=switchover)
        ended = time.monotonic()
        time.sleep(0.5)
        router = {s: writes.longest(s, started, ended) for s in shards}
        server = {r.shard: r.write_pause for r in rolls}
        print(f"{label}: {ended - started:.1f} s end to end for {len(shards)} shards")
        print(f"  {'shard':10} {'Router ms':>10} {'server ms':>10}")
        for s in shards:
            print(f"  {s:10} {ms(router[s]):>10} {ms(server.get(s, 0.0)):>10}")
        print(
            f"  median / max at the Router: {ms(statistics.median(router.values()))} / "
            f"{ms(max(router.values()))} ms"
        )
        time.sleep(1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--writers", type=int, default=4)
    args = parser.parse_args()
    with temp_cluster(shards=args.shards, replicas=1) as cluster:
        ring = catalog.read_any(cluster.topology, cluster.credentials()).record().ring()
        shards = [s.name for s in cluster.topology.spec.shards]
        writes = Writes()
        stop = threading.Event()
        with Router(cluster, max_size=args.writers, epoch_check_interval=0.5) as router:
            threads = [
                threading.Thread(target=writer, args=(router, ring, writes, stop))
                for _ in range(args.writers)
            ]
            for thread in threads:
                thread.start()
            try:
                measure(cluster, writes, shards)
            finally:
                stop.set()
                for thread in threads:
                    thread.join()
        print(f"# {args.writers} writers, {len(writes.done):,} inserts, {writes.failed} failed")


if __name__ == "__main__":
    main()
