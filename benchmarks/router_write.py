"""Router write throughput against raw psycopg, in the same run.

    python benchmarks/router_write.py [--writes N] [--workers W] [--repeat R] [--replicas K]
        [--cluster NAME]

Brings up its own 2-shard cluster (test image) and removes it afterwards. Each round inserts
``--writes`` fresh users, first by one thread, then by ``--workers`` threads, five ways:

- ``bare``: a plain autocommit INSERT into ``users_bare``, a copy of ``users`` without the guard
  triggers (what the statement costs with no fence at all);
- ``raw``: a plain autocommit INSERT into ``users`` (its guard triggers armed for no range);
- ``raw+fence``: the same connection doing exactly what ``Router.execute`` sends: the INSERT,
  then ``shardctl.assert_owner`` only if it touched no row (never, here);
- ``old fence``: what the Router sent before (BEGIN, ``shardctl.assert_owner``, the INSERT,
  COMMIT, pipelined, no prepared statements), for comparison;
- ``Router``: ``Router.execute``.

Every raw thread holds one psycopg connection per primary (default ``prepare_threshold``) and
sends each key to its ring owner, as the Router spreads them. Best of ``--repeat`` interleaved
rounds; the ratios are Router / raw (what routing and fencing cost together) and
Router / raw+fence (what the routing library itself costs).
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
INSERT_BARE = INSERT.replace("users", "users_bare")


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
    parser.add_argument("--cluster", help="cluster name (default: a random one)")
    args = parser.parse_args()
    with temp_cluster(replicas=args.replicas, name=args.cluster) as cluster:
        run(cluster, args.writes, args.workers, args.repeat)


Writer = Callable[[uuid.UUID], None]
WAYS = ("bare", "raw", "raw+fence", "old fence", "Router")


def run(cluster: Cluster, writes: int, workers: int, repeat: int) -> None:
    credentials = cluster.credentials()
    database = cluster.topology.spec.database
    infos = {
        shard: pg.conninfo(cluster.topology.shard_nodes(shard)[0], credentials, database)
        for shard in (s.name for s in cluster.topology.spec.shards)
    }
    for info in infos.values():
        with psycopg.connect(info, autocommit=True) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS users_bare (LIKE users INCLUDING ALL)")
    raw_conns: list[psycopg.Connection[tuple[object, ...]]] = []

    with Router(cluster, max_size=workers) as router:
        router.execute(uuid.uuid4(), INSERT, (uuid.uuid4(),))  # open pools, read the ring
        ring = router.ring

        def connections() -> Callable[[uuid.UUID], psycopg.Connection[tuple[object, ...]]]:
            conns = {shard: psycopg.connect(info, autocommit=True) for shard, info in infos.items()}
            raw_conns.extend(conns.values())
            return lambda key: conns[ring.node_for(key)]

        def plain(statement: str) -> Callable[[], Writer]:
            def make() -> Writer:
                conn_for = connections()

                def write(key: uuid.UUID) -> None:
                    conn_for(key).execute(statement, (key,))

                return write

            return make

        def fenced() -> Writer:
            """Raw psycopg doing what Router.execute does on the wire."""
            conn_for = connections()

            def write(key: uuid.UUID) -> None:
                conn = conn_for(key)
                if conn.execute(INSERT, (key,)).rowcount < 1:
                    conn.execute("SELECT shardctl.assert_owner(%s)", (str(key),))

            return write

        def old_fence() -> Writer:
            """Raw psycopg doing what the Router did before: the fence check, pipelined."""
            conn_for = connections()

            def write(key: uuid.UUID) -> None:
                conn = conn_for(key)
                with conn.pipeline():
                    conn.execute("BEGIN", prepare=False)
                    conn.execute("SELECT shardctl.assert_owner(%s)", (str(key),), prepare=False)
                    conn.execute(INSERT, (key,), prepare=False)
                    conn.execute("COMMIT", prepare=False)

            return write

        def routed() -> Writer:
            def write(key: uuid.UUID) -> None:
                router.execute(key, INSERT, (key,))

            return write

        makers: dict[str, Callable[[], Writer]] = {
            "bare": plain(INSERT_BARE),
            "raw": plain(INSERT),
            "raw+fence": fenced,
            "old fence": old_fence,
            "Router": routed,
        }
        best: dict[str, float] = {}
        for _ in range(repeat):
            for threads in (1, workers):
                for name in WAYS:
                    label = f"{name}@{threads}"
                    best[label] = max(best.get(label, 0.0), rate(threads, writes, makers[name]))
            for conn in raw_conns:
                conn.close()
            raw_conns.clear()
    print(f"writes per round: {writes}, best of {repeat} interleaved rounds")
    print(
        f"{'threads':>8} {'bare/s':>8} {'raw/s':>8} {'raw+fence/s':>12} {'old fence/s':>12} "
        f"{'Router/s':>9} {'Router/raw':>11} {'Router/raw+fence':>17}"
    )
    for threads in (1, workers):
        b, r, f, o, t = (best[f"{name}@{threads}"] for name in WAYS)
        print(
            f"{threads:>8} {b:>8,.0f} {r:>8,.0f} {f:>12,.0f} {o:>12,.0f} {t:>9,.0f} "
            f"{t / r:>11.2f} {t / f:>17.2f}"
        )


if __name__ == "__main__":
    main()
