"""Which concurrency model for ``shardctl load --users``: measured side by side, same cluster.

    python benchmarks/load_models.py [--workers 16] [--users 1000] [--seconds 6] [--repeat 3]
                                     [--topology FILE]

Brings up a 4 shards x 1 replica cluster (removed afterwards) unless ``--topology`` names a
running one. Every model runs ``--users`` virtual users, insert-only (the upsert ``load``
sends, fresh uuid4 keys), with at most ``--workers`` statements in flight, for ``--seconds``;
best of ``--repeat`` interleaved rounds, in inserts/s and client CPU seconds per 1,000 inserts:

- ``threads`` (what ``load`` ships): ``--workers`` threads take the user that waited longest
  from one queue and call ``Router.execute`` (``shardctl.load.run_load``);
- ``asyncio+executor``: one coroutine per user, each op ``run_in_executor`` on a pool of
  ``--workers`` threads calling ``Router.execute``;
- ``processes xP``: P processes, each its own Router and ``run_load`` with workers/P threads
  and users/P users;
- without the Router (no fence, no retries; what the client model alone costs):
  ``raw threads`` (``--workers`` threads, one autocommit connection per primary each, a user
  queue as above) and ``raw asyncio`` (psycopg's ``AsyncConnectionPool`` per primary holding
  ``--workers`` connections, one coroutine per user).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import resource
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import psycopg
from _cluster import temp_cluster
from psycopg_pool import AsyncConnectionPool

from shardctl import Router
from shardctl.db import pg
from shardctl.ops.cluster import Cluster
from shardctl.workload.load import run_load
from shardctl.workload.users import LoadConfig, Mix

UPSERT = (
    "INSERT INTO users (id, first_name, last_name, email) VALUES (%s, 'f', 'l', 'e') "
    "ON CONFLICT (id) DO UPDATE SET first_name = EXCLUDED.first_name, "
    "last_name = EXCLUDED.last_name, email = EXCLUDED.email, updated_at = now()"
)
INSERTS = Mix(insert=100, read=0, update=0, delete=0)


def cpu() -> float:
    """CPU seconds this process and its finished children used so far."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def threads_model(path: Path, workers: int, users: int, seconds: float) -> int:
    """``load``'s model: inserts done."""
    with Cluster.load(path) as cluster, Router(cluster, max_size=workers) as router:
        config = LoadConfig(workers=workers, users=users, duration=seconds, mix=INSERTS)
        return run_load(router, config).ok


def asyncio_model(path: Path, workers: int, users: int, seconds: float) -> int:
    """Coroutines per user around the sync Router, through a bounded executor: inserts done."""
    with Cluster.load(path) as cluster, Router(cluster, max_size=workers) as router:
        router.execute(uuid.uuid4(), "SELECT 1")  # read the ring, open the pools
        executor = ThreadPoolExecutor(max_workers=workers)
        done = 0

        def insert() -> None:
            key = uuid.uuid4()
            router.execute(key, UPSERT, (key,))

        async def user(until: float) -> None:
            nonlocal done
            loop = asyncio.get_running_loop()
            while time.monotonic() < until:
                await loop.run_in_executor(executor, insert)
                done += 1

        async def main() -> None:
            until = time.monotonic() + seconds
            await asyncio.gather(*(user(until) for _ in range(users)))

        asyncio.run(main())
        executor.shutdown()
        return done


def _process(path: Path, workers: int, users: int, seconds: float, out: object) -> None:
    out.put(threads_model(path, workers, users, seconds))  # type: ignore[attr-defined]


def processes_model(path: Path, workers: int, users: int, seconds: float, count: int) -> int:
    """``count`` processes, each its own Router: inserts done in all."""
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    procs = [
        context.Process(
            target=_process, args=(path, workers // count, users // count, seconds, out)
        )
        for _ in range(count)
    ]
    for proc in procs:
        proc.start()
    total = sum(out.get() for _ in procs)
    for proc in procs:
        proc.join()
    return int(total)


def raw_threads(infos: list[str], workers: int, users: int, seconds: float) -> int:
    """No Router: threads with a connection per primary, a queue of users; inserts done."""
    ready: deque[int] = deque(range(users))
    counts = [0] * workers
    until = time.monotonic() + seconds
    barrier = threading.Barrier(workers)

    def work(i: int) -> None:
        conns = [psycopg.connect(info, autocommit=True, prepare_threshold=None) for info in infos]
        barrier.wait()
        while time.monotonic() < until:
            user = ready.popleft()
            key = uuid.uuid4()
            conns[key.int % len(conns)].execute(UPSERT, (key,))
            counts[i] += 1
            ready.append(user)
        for conn in conns:
            conn.close()

    pool = [threading.Thread(target=work, args=(i,)) for i in range(workers)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return sum(counts)


def raw_asyncio(infos: list[str], workers: int, users: int, seconds: float) -> int:
    """No Router: psycopg's async pools, ``workers`` connections each, a coroutine per user."""

    async def main() -> int:
        pools = [
            AsyncConnectionPool(
                info, min_size=workers, max_size=workers, open=False,
                kwargs={"autocommit": True, "prepare_threshold": None},
            )
            for info in infos
        ]  # fmt: skip
        for pool in pools:
            await pool.open(wait=True)
        gate = asyncio.Semaphore(workers)  # at most --workers statements in flight, as above
        done = 0
        until = time.monotonic() + seconds

        async def user() -> None:
            nonlocal done
            while time.monotonic() < until:
                key = uuid.uuid4()
                async with gate, pools[key.int % len(pools)].connection() as conn:
                    await conn.execute(UPSERT, (key,))
                done += 1

        await asyncio.gather(*(user() for _ in range(users)))
        for pool in pools:
            await pool.close()
        return done

    return asyncio.run(main())


def run(cluster: Cluster, workers: int, users: int, seconds: float, repeat: int) -> None:
    """Interleaved rounds of every model; best of ``repeat``."""
    path = cluster.topology.path
    spec = cluster.topology.spec
    infos = [
        pg.conninfo(n, cluster.credentials(), spec.database) for n in cluster.topology.primaries()
    ]
    models: dict[str, Callable[[], int]] = {
        "threads (load)": lambda: threads_model(path, workers, users, seconds),
        "asyncio+executor": lambda: asyncio_model(path, workers, users, seconds),
        "processes x2": lambda: processes_model(path, workers, users, seconds, 2),
        "processes x4": lambda: processes_model(path, workers, users, seconds, 4),
        "raw threads": lambda: raw_threads(infos, workers, users, seconds),
        "raw asyncio": lambda: raw_asyncio(infos, workers, users, seconds),
    }
    best: dict[str, tuple[float, float]] = {}
    for _ in range(repeat):
        for name, model in models.items():
            used, started = cpu(), time.monotonic()
            done = model()
            wall, used = time.monotonic() - started, cpu() - used
            rate, per = done / seconds, used / max(done, 1) * 1000
            if rate > best.get(name, (0.0, 0.0))[0]:
                best[name] = (rate, per)
            del wall
    print(f"# {users} users, {workers} in flight, {seconds:g} s, insert-only, best of {repeat}")
    print(f"{'model':<18} {'inserts/s':>10} {'client CPU s/1k':>16}")
    for name, (rate, per) in best.items():
        print(f"{name:<18} {rate:>10,.0f} {per:>16.2f}")


def main() -> None:
    """Parse options, bring a cluster up (or use --topology), measure."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--topology", type=Path, default=None)
    args = parser.parse_args()
    with ExitStack() as stack:
        if args.topology is not None:
            cluster = stack.enter_context(Cluster.load(args.topology))
        else:
            cluster = stack.enter_context(temp_cluster(shards=4, replicas=1))
        run(cluster, args.workers, args.users, args.seconds, args.repeat)


if __name__ == "__main__":
    main()
