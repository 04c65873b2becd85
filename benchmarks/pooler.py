"""Router writes through each node's PgBouncer (transaction mode) against straight to the
servers, in the same run; and the server connections many Routers cost each way.

    python benchmarks/pooler.py [--writes N] [--workers W] [--repeat R] [--routers K]

Brings up its own 2 x 1 cluster with a pooler per node (the local PgBouncer image,
``SHARDCTL_POOLER_IMAGE``, default ``shardctl-test/pgbouncer:1``) and removes it afterwards.
Each round inserts ``--writes`` fresh users through ``Router.execute`` twice, once with
``via="direct"`` and once with ``via="pooler"``, by one thread and then by ``--workers``
threads; best of ``--repeat`` interleaved rounds, alternating which goes first. The
per-write overhead is the difference of the mean times per write. Then ``--routers`` Routers
(application processes, each with a pool of ``--workers``) are opened each way, and the
application role's server connections on one primary are counted in ``pg_stat_activity``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from _cluster import REPO  # noqa: F401  (puts the repository on sys.path)

from shardctl import Router, pg
from shardctl.cluster import Cluster
from tests.clusters import free_base_port, make_topology, running

INSERT = "INSERT INTO users (id, first_name, email) VALUES (%s, 'bench', 'bench@x')"
POOLER_IMAGE = os.environ.get("SHARDCTL_POOLER_IMAGE", "shardctl-test/pgbouncer:1")
POOL_SIZE = 10


def rate(threads: int, writes: int, write: Callable[[uuid.UUID], None]) -> float:
    """Writes per second of ``threads`` threads sharing ``writes`` inserts through ``write``."""
    per = writes // threads
    keys = [[uuid.uuid4() for _ in range(per)] for _ in range(threads)]
    barrier = threading.Barrier(threads + 1)

    def work(mine: list[uuid.UUID]) -> None:
        barrier.wait()
        for key in mine:
            write(key)

    pool = [threading.Thread(target=work, args=(k,)) for k in keys]
    for t in pool:
        t.start()
    barrier.wait()
    started = time.perf_counter()
    for t in pool:
        t.join()
    return per * threads / (time.perf_counter() - started)


def app_connections(cluster: Cluster) -> int:
    """The application role's server connections on shard-0's primary."""
    node = cluster.topology.node("shard-0-primary")
    with pg.connect(node, cluster.credentials(), "postgres") as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE usename = %s",
            (cluster.topology.spec.credentials.app_user,),
        ).fetchone()
    return int(str(row[0])) if row else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writes", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--routers", type=int, default=10)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="shardctl-bench-pooler-"))
    path = make_topology(
        folder,
        2,
        1,
        base_port=free_base_port(80),
        pooler={"image": POOLER_IMAGE, "pool_size": POOL_SIZE, "port_offset": 40},
    )
    print(f"# bringing up 2 shards x 1 replica with a PgBouncer per node (pool_size {POOL_SIZE})")
    try:
        with running(path) as cluster:
            run(cluster, args.writes, args.workers, args.repeat, args.routers)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def run(cluster: Cluster, writes: int, workers: int, repeat: int, routers: int) -> None:
    direct = Router(cluster, max_size=workers, via="direct")
    pooled = Router(cluster, max_size=workers, via="pooler")

    def through(router: Router) -> Callable[[uuid.UUID], None]:
        def write(key: uuid.UUID) -> None:
            router.execute(key, INSERT, (key,))

        return write

    try:
        for router in (direct, pooled):  # warm: catalog read, pools open
            rate(workers, 200, through(router))
        print("| threads | direct/s | pooler/s | pooler / direct | overhead per write |")
        print("| --- | --- | --- | --- | --- |")
        for threads in (1, workers):
            best = {"direct": 0.0, "pooler": 0.0}
            for round_ in range(repeat):
                # Alternating which goes first: the second of a pair ran on a warmer machine.
                pair = [("direct", direct), ("pooler", pooled)]
                for name, router in pair if round_ % 2 == 0 else pair[::-1]:
                    best[name] = max(best[name], rate(threads, writes, through(router)))
            overhead_us = (1 / best["pooler"] - 1 / best["direct"]) * 1e6 * threads
            print(
                f"| {threads} | {best['direct']:,.0f} | {best['pooler']:,.0f} | "
                f"{best['pooler'] / best['direct']:.2f} | {overhead_us:+.0f} µs |"
            )
    finally:
        direct.close()
        pooled.close()

    print()
    print(f"| {routers} Routers x pool of {workers} | app connections on shard-0's primary |")
    print("| --- | --- |")
    for via in ("direct", "pooler"):
        opened = [
            Router(cluster, min_size=workers, max_size=workers, via=via) for _ in range(routers)
        ]
        try:
            for router in opened:
                rate(workers, workers * 4, through(router))
            time.sleep(1.0)
            print(f"| via {via} | {app_connections(cluster)} |")
        finally:
            for router in opened:
                router.close()


if __name__ == "__main__":
    main()
