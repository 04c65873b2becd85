"""Router writes through each node's PgBouncer (transaction mode) against straight to the
servers, in the same run; and the server connections many Routers cost each way.

    python benchmarks/pooler.py [--writes N] [--workers W] [--repeat R] [--routers K]
                                [--users U] [--users-seconds S] [--users-rounds R]
                                [--load-workers W] [--processes 1,4] [--skip-writes]

Brings up its own 2 x 1 cluster with a pooler per node (the local PgBouncer image,
``SHARDCTL_POOLER_IMAGE``, default ``shardctl-test/pgbouncer:1``) and removes it afterwards.
Each round inserts ``--writes`` fresh users through ``Router.execute`` twice, once with
``via="direct"`` and once with ``via="pooler"``, by one thread and then by ``--workers``
threads; best of ``--repeat`` interleaved rounds, alternating which goes first. The
per-write overhead is the difference of the mean times per write. Then ``--routers`` Routers
(application processes, each with a pool of ``--workers``) are opened each way, and the
application role's server connections on one primary are counted in ``pg_stat_activity``.

With ``--users U``, then the virtual users table: ``shardctl load --users U --via pooler`` and
``--via direct`` (the real CLI, ``--load-workers`` workers, ``--users-seconds`` each, default
mix), alternating which goes first, ``--users-rounds`` times; for each count in
``--processes``, that many ``load`` processes at once share the U users (U / P each) and the
poolers, as application processes would. While each run lasts, a sampler counts the
application role's server connections on every primary in ``pg_stat_activity`` every 0.2 s;
the table gives their maximum (over primaries and samples) against ``pool_size``, with the
success rate, the errors, the throughput (summed over the processes) and p50/p95/p99 (the
worst process's).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import docker
from _cluster import REPO  # noqa: F401  (puts the repository on sys.path)

from shardctl import Router
from shardctl.db import pg
from shardctl.ops.cluster import Cluster
from tests.clusters import free_base_port, make_topology, running

INSERT = "INSERT INTO users (id, first_name, email) VALUES (%s, 'bench', 'bench@x')"
POOLER_IMAGE = os.environ.get("SHARDCTL_POOLER_IMAGE", "shardctl-test/pgbouncer:1")
POOL_SIZE = 10
SAMPLE_EVERY = 0.2
"""Seconds between two samples of the server connections."""


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


POOLED_QUERY = (
    "SELECT count(*) FILTER (WHERE client_addr = ANY(%s::inet[])), count(*) "
    "FROM pg_catalog.pg_stat_activity WHERE usename = %s"
)
"""The application role's server connections: from the poolers' addresses, and in all."""


def pooler_addresses(cluster: Cluster) -> list[str]:
    """Each pooler's address on the cluster network: its server connections come from it."""
    engine = docker.from_env()
    try:
        return sorted(
            net["IPAddress"]
            for node in cluster.topology.pooled_nodes()
            for net in engine.containers.get(node.pooler_container)
            .attrs["NetworkSettings"]["Networks"]
            .values()
            if net.get("IPAddress")
        )
    finally:
        engine.close()


def app_connections(cluster: Cluster) -> tuple[int, int]:
    """The application role's server connections on shard-0's primary: from its pooler, and
    not (PgBouncer keeps idle server connections, which a direct count must leave out)."""
    node = cluster.topology.node("shard-0-primary")
    user = cluster.topology.spec.credentials.app_user
    with pg.connect(node, cluster.credentials(), "postgres") as conn:
        row = conn.execute(POOLED_QUERY, (pooler_addresses(cluster), user)).fetchone()
    pooled, every = (int(str(row[0])), int(str(row[1]))) if row else (0, 0)
    return pooled, every - pooled


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writes", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--routers", type=int, default=10)
    parser.add_argument("--users", type=int, default=0, help="0: no virtual users table")
    parser.add_argument("--users-seconds", type=float, default=15.0)
    parser.add_argument("--users-rounds", type=int, default=2)
    parser.add_argument("--load-workers", type=int, default=16)
    parser.add_argument("--processes", default="1,4")
    parser.add_argument("--skip-writes", action="store_true", help="only the users table")
    args = parser.parse_args()
    processes = [int(p) for p in args.processes.split(",") if p.strip()]
    folder = Path(tempfile.mkdtemp(prefix="shardctl-bench-pooler-"))
    path = make_topology(
        folder,
        2,
        1,
        base_port=free_base_port(80),
        pooler={"image": POOLER_IMAGE, "pool_size": POOL_SIZE, "port_offset": 40},
        cluster=f"h17b-pool-{uuid.uuid4().hex[:6]}",
    )
    print(f"# bringing up 2 shards x 1 replica with a PgBouncer per node (pool_size {POOL_SIZE})")
    try:
        with running(path) as cluster:
            if not args.skip_writes:
                run(cluster, args.writes, args.workers, args.repeat, args.routers)
            if args.users:
                users_table(
                    cluster,
                    args.users,
                    args.users_seconds,
                    args.users_rounds,
                    args.load_workers,
                    processes,
                )
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
    print(
        f"| {routers} Routers x pool of {workers} | app connections on shard-0's primary: "
        "from its pooler | not from its pooler |"
    )
    print("| --- | --- | --- |")
    for via in ("direct", "pooler"):
        opened = [
            Router(cluster, min_size=workers, max_size=workers, via=via) for _ in range(routers)
        ]
        try:
            for router in opened:
                rate(workers, workers * 4, through(router))
            time.sleep(1.0)
            from_pooler, other = app_connections(cluster)
            print(f"| via {via} | {from_pooler} | {other} |")
        finally:
            for router in opened:
                router.close()


class Sampler:
    """The most server connections of the application role seen on each primary, sampled
    every ``interval`` seconds in ``pg_stat_activity`` until stopped, split by where they come
    from: a pooler's container address, or anything else (a Router straight to the server).
    The split matters: PgBouncer keeps its idle server connections (``server_idle_timeout``),
    so a direct run after a pooler run still sees the pooler's. The sampler itself connects
    as the superuser, straight to the servers: its connections are not the application's."""

    def __init__(self, cluster: Cluster, interval: float = SAMPLE_EVERY) -> None:
        self.cluster = cluster
        self.interval = interval
        primaries = cluster.topology.primaries()
        self.pooled = {node.name: 0 for node in primaries}
        self.other = {node.name: 0 for node in primaries}
        self.samples = 0
        self.addresses = pooler_addresses(cluster)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        topology = self.cluster.topology
        user = topology.spec.credentials.app_user
        conns = [
            (node.name, pg.connect(node, self.cluster.credentials(), "postgres"))
            for node in topology.primaries()
        ]
        try:
            while not self._stop.is_set():
                for name, conn in conns:
                    row = conn.execute(POOLED_QUERY, (self.addresses, user)).fetchone()
                    pooled, every = (int(str(row[0])), int(str(row[1]))) if row else (0, 0)
                    self.pooled[name] = max(self.pooled[name], pooled)
                    self.other[name] = max(self.other[name], every - pooled)
                self.samples += 1
                self._stop.wait(self.interval)
        finally:
            for _, conn in conns:
                conn.close()


@dataclass(frozen=True)
class Run:
    """What one ``shardctl load`` process reported (its JSON ``total``), or how it ended."""

    ops: int
    failed: int
    throughput: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    errors: dict[str, int]

    @classmethod
    def parse(cls, text: str) -> Run:
        """The run of ``load -o json``'s report."""
        report = json.loads(text)
        total = report["total"]
        return cls(
            ops=int(total["ops"]),
            failed=int(total["failed"]),
            throughput=float(report["throughput"]),
            p50_ms=float(total["p50_ms"]),
            p95_ms=float(total["p95_ms"]),
            p99_ms=float(total["p99_ms"]),
            errors={str(m): int(n) for m, n in total["errors"].items()},
        )

    @classmethod
    def crashed(cls, code: int, stderr: str) -> Run:
        """A process that gave no report: one error, its exit code and last line."""
        last = (stderr.strip().splitlines() or ["no output"])[-1]
        return cls(0, 0, 0.0, 0.0, 0.0, 0.0, {f"load exit {code}: {last}": 1})


def load_processes(
    path: Path, via: str, users: int, seconds: float, workers: int, processes: int
) -> list[Run]:
    """What each of ``processes`` ``shardctl load`` processes, run at once and sharing
    ``users`` virtual users, reported."""
    share = [users // processes + (1 if i < users % processes else 0) for i in range(processes)]
    started = []
    for i, n in enumerate(share):
        argv = [sys.executable, "-m", "shardctl", "load", "-f", str(path), "--via", via,
                "--users", str(n), "--workers", str(workers), "--duration", str(seconds),
                "--seed", str(i), "-o", "json"]  # fmt: skip
        started.append(
            subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
    runs = []
    for proc in started:
        out, err = proc.communicate(timeout=seconds + 600)
        # Exit 1 is "an op failed": still a report, whose errors the table shows. Any other
        # (3: a server refused the connections) is a row of the table too, not the end.
        ok = proc.returncode in (0, 1)
        runs.append(Run.parse(out) if ok else Run.crashed(proc.returncode, err))
    return runs


def users_table(
    cluster: Cluster, users: int, seconds: float, rounds: int, workers: int, processes: list[int]
) -> None:
    """``shardctl load --users`` through the poolers against direct, sampled server
    connections per primary against ``pool_size``."""
    path = cluster.topology.path
    print()
    print(
        f"# shardctl load --users {users:,} (over P processes) --workers {workers} "
        f"--duration {seconds:g}, default mix, {rounds} round(s) alternating "
        f"(load average {_load()})"
    )
    print(
        "| processes | via | round | ops | success | errors | ops/s | p50 ms | p95 ms | p99 ms "
        f"| max server conns per primary from poolers (pool_size {POOL_SIZE}) | direct |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for count in processes:
        for round_ in range(rounds):
            pair = ["pooler", "direct"]
            for via in pair if round_ % 2 == 0 else pair[::-1]:
                with Sampler(cluster) as sampler:
                    runs = load_processes(path, via, users, seconds, workers, count)
                ops = sum(r.ops for r in runs)
                failed = sum(r.failed for r in runs)
                errors: dict[str, int] = {}
                for r in runs:
                    for message, n in r.errors.items():
                        errors[message] = errors.get(message, 0) + n
                shown = "; ".join(f"{n}x {m[:80]}" for m, n in errors.items()) or "0"
                # Percentiles do not add up over processes: the worst process's.
                print(
                    f"| {count} | {via} | {round_ + 1} | {ops:,} | "
                    f"{(ops - failed) / max(1, ops) * 100:.2f}% | {shown} | "
                    f"{sum(r.throughput for r in runs):,.0f} | "
                    f"{max(r.p50_ms for r in runs):.1f} | {max(r.p95_ms for r in runs):.1f} | "
                    f"{max(r.p99_ms for r in runs):.1f} | "
                    f"{max(sampler.pooled.values())} | {max(sampler.other.values())} |",
                    flush=True,
                )
    print(f"# load average after: {_load()}; about {SAMPLE_EVERY:g} s between samples")


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


if __name__ == "__main__":
    main()
