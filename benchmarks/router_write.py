"""Router write throughput against raw psycopg to one primary, in the same run.

    python benchmarks/router_write.py [--writes N] [--workers W] [--repeat R] [--replicas K]

Brings up its own 2-shard cluster (test image) and removes it afterwards. Each round inserts
``--writes`` fresh users twice — once through ``Router.execute`` (which routes by key, fences
the write with ``shardctl.assert_owner`` in a transaction, and may go to either primary), once
with a plain autocommit ``INSERT`` on one psycopg connection to shard-0's primary, and once
more on such a connection doing what the Router sends (BEGIN, ``shardctl.assert_owner``, the
INSERT, COMMIT, pipelined) — first by one thread, then by ``--workers`` threads (each raw
thread with its own connection). Best of ``--repeat`` interleaved rounds; the ratios are
router / raw (what routing and fencing cost together) and router / raw+fence (what the
routing library itself costs).
"""

from __future__ import annotations

import argparse
import threading
import time
import uuid
from collections.abc import Callable

import psycopg
from _cluster import temp_cluster

from shardctl import Router, pg
from shardctl.cluster import Cluster

INSERT = "INSERT INTO users (id, first_name, email) VALUES (%s, 'bench', 'bench@x')"


def rate(threads: int, writes: int, make: Callable[[], Callable[[uuid.UUID], None]]) -> float:
    """Writes per second of ``threads`` threads sharing ``writes`` inserts."""
    per = writes // threads
    writers = [make() for _ in range(threads)]
    keys = [[uuid.uuid4() for _ in range(per)] for _ in range(threads)]
    barrier = threading.Barrier(threads + 1)

    def work(write: Callable[[uuid.UUID], None], mine: list[uuid.UUID]) -> None:
        barrier.wait()
        for key in mine:
            write(key)

    pool = [threading.Thread(target=work, args=(w, k)) for w, k in zip(writers, keys, strict=True)]
    for t in pool:
        t.start()
    barrier.wait()
    started = time.perf_counter()
    for t in pool:
        t.join()
    return per * threads / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writes", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--replicas", type=int, default=1)
    args = parser.parse_args()
    with temp_cluster(replicas=args.replicas) as cluster:
        run(cluster, args.writes, args.workers, args.repeat)


def run(cluster: Cluster, writes: int, workers: int, repeat: int) -> None:
    node = cluster.topology.node("shard-0-primary")
    info = pg.conninfo(node, cluster.credentials(), cluster.topology.spec.database)
    raw_conns: list[psycopg.Connection[tuple[object, ...]]] = []

    def raw() -> Callable[[uuid.UUID], None]:
        conn = psycopg.connect(info, autocommit=True)
        raw_conns.append(conn)

        def write(key: uuid.UUID) -> None:
            conn.execute(INSERT, (key,))

        return write

    def fenced() -> Callable[[uuid.UUID], None]:
        """Raw psycopg doing what the Router does on the wire: the fence check, pipelined."""
        conn = psycopg.connect(info, autocommit=True)
        raw_conns.append(conn)

        def write(key: uuid.UUID) -> None:
            with conn.pipeline():
                conn.execute("BEGIN")
                conn.execute("SELECT shardctl.assert_owner(%s)", (str(key),))
                conn.execute(INSERT, (key,))
                conn.execute("COMMIT")

        return write

    with Router(cluster, max_size=workers) as router:
        router.execute(uuid.uuid4(), INSERT, (uuid.uuid4(),))  # open pools, read the ring

        def routed() -> Callable[[uuid.UUID], None]:
            def write(key: uuid.UUID) -> None:
                router.execute(key, INSERT, (key,))

            return write

        best: dict[str, float] = {}
        for _ in range(repeat):
            for threads in (1, workers):
                for name, make in (("raw", raw), ("fenced", fenced), ("router", routed)):
                    label = f"{name}@{threads}"
                    best[label] = max(best.get(label, 0.0), rate(threads, writes, make))
    for conn in raw_conns:
        conn.close()
    print(f"writes per round: {writes}, best of {repeat} interleaved rounds")
    print(
        f"{'threads':>8} {'raw/s':>8} {'raw+fence/s':>12} {'Router/s':>9} "
        f"{'Router/raw':>11} {'Router/raw+fence':>17}"
    )
    for threads in (1, workers):
        r, f, o = (best[f"{name}@{threads}"] for name in ("raw", "fenced", "router"))
        print(f"{threads:>8} {r:>8,.0f} {f:>12,.0f} {o:>9,.0f} {o / r:>11.2f} {o / f:>17.2f}")


if __name__ == "__main__":
    main()
