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
- ``Router``: ``Router.execute``;
- ``Router/noprep``: the same with ``prepare_threshold=None`` (no server-side prepared
  statements, as the Router's pools had before issue 14).

Every raw thread holds one psycopg connection per primary (default ``prepare_threshold``) and
sends each key to its ring owner, as the Router spreads them. Best of ``--repeat`` interleaved
rounds; the ratios are Router / raw (what routing and fencing cost together) and
Router / raw+fence (what the routing library itself costs). A second table gives the client's
CPU time per write (this process, least of the rounds): unlike throughput, it hardly moves when
other work loads the machine.
"""

from __future__ import annotations

import argparse
import threading
import time
import uuid
from collections.abc import Callable

import psycopg
from _cluster import temp_cluster

from shardctl import Router
from shardctl.db import pg
from shardctl.ops.cluster import Cluster
from shardctl.router import pools
from shardctl.router.pools import PREPARE_THRESHOLD

INSERT = "INSERT INTO users (id, first_name, email) VALUES (%s, 'bench', 'bench@x')"
INSERT_BARE = INSERT.replace("users", "users_bare")


def rate(
    threads: int, writes: int, make: Callable[[], Callable[[uuid.UUID], None]]
) -> tuple[float, float]:
    """Writes per second of ``threads`` threads sharing ``writes`` inserts, and this process's
    CPU microseconds per write (client cost, steady however loaded the machine is)."""
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
    started, cpu = time.perf_counter(), time.process_time()
    for t in pool:
        t.join()
    done = per * threads
    return done / (time.perf_counter() - started), (time.process_time() - cpu) / done * 1e6


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
WAYS = ("bare", "raw", "raw+fence", "old fence", "Router", "Router/noprep")


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

    pools.PREPARE_THRESHOLD = None  # read when a pool is made: this router's pools prepare nothing
    unprepared = Router(cluster, max_size=workers)
    unprepared.execute(uuid.uuid4(), INSERT, (uuid.uuid4(),))
    pools.PREPARE_THRESHOLD = PREPARE_THRESHOLD
    with unprepared, Router(cluster, max_size=workers) as router:
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

        def routed(through: Router) -> Callable[[], Writer]:
            def make() -> Writer:
                def write(key: uuid.UUID) -> None:
                    through.execute(key, INSERT, (key,))

                return write

            return make

        makers: dict[str, Callable[[], Writer]] = {
            "bare": plain(INSERT_BARE),
            "raw": plain(INSERT),
            "raw+fence": fenced,
            "old fence": old_fence,
            "Router": routed(router),
            "Router/noprep": routed(unprepared),
        }
        best: dict[str, float] = {}
        cpu: dict[str, float] = {}
        for _ in range(repeat):
            for threads in (1, workers):
                for name in WAYS:
                    label = f"{name}@{threads}"
                    per_second, micros = rate(threads, writes, makers[name])
                    best[label] = max(best.get(label, 0.0), per_second)
                    cpu[label] = min(cpu.get(label, float("inf")), micros)
            for conn in raw_conns:
                conn.close()
            raw_conns.clear()
    print(f"writes per round: {writes}, best of {repeat} interleaved rounds")
    print(f"{'threads':>8} " + " ".join(f"{name + '/s':>13}" for name in WAYS))
    for threads in (1, workers):
        print(f"{threads:>8} " + " ".join(f"{best[f'{n}@{threads}']:>13,.0f}" for n in WAYS))
    print(f"{'threads':>8} {'Router/raw':>11} {'Router/raw+fence':>17} {'noprep/Router':>14}")
    for threads in (1, workers):
        r, f, t, u = (
            best[f"{n}@{threads}"] for n in ("raw", "raw+fence", "Router", "Router/noprep")
        )
        print(f"{threads:>8} {t / r:>11.2f} {t / f:>17.2f} {u / t:>14.2f}")
    print("client CPU per write, microseconds (least of the rounds)")
    print(f"{'threads':>8} " + " ".join(f"{name:>13}" for name in WAYS))
    for threads in (1, workers):
        print(f"{threads:>8} " + " ".join(f"{cpu[f'{n}@{threads}']:>13.0f}" for n in WAYS))


if __name__ == "__main__":
    main()
