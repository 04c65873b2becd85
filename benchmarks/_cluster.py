"""A throw-away cluster for benchmarks: a temp topology with the test image, removed after."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from shardctl.config.credentials import Credentials  # noqa: E402
from shardctl.config.schema import TableSpec  # noqa: E402
from shardctl.config.topology import Node  # noqa: E402
from shardctl.db import digest, pg  # noqa: E402
from shardctl.ops.cluster import Cluster  # noqa: E402
from shardctl.state import ddl, resync  # noqa: E402
from shardctl.util import fanout  # noqa: E402
from tests.clusters import make_topology, running  # noqa: E402  (shared with the tests)


@contextmanager
def temp_cluster(
    shards: int = 2,
    replicas: int = 1,
    ring: dict[str, object] | None = None,
    name: str | None = None,
    **more: object,
) -> Iterator[Cluster]:
    """Bring up a fresh cluster (users table, test image); bring it down with its volumes."""
    folder = Path(tempfile.mkdtemp(prefix="shardctl-bench-"))
    extra: dict[str, object] = {"ring": ring} if ring else {}
    extra.update(more)
    if name:
        extra["cluster"] = name
    path = make_topology(folder, shards, replicas, **extra)
    print(f"# bringing up {shards} shards x {replicas} replica(s)")
    try:
        with running(path) as cluster:
            yield cluster
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@dataclass(frozen=True)
class Pair:
    """A 2-shard cluster's two primaries, each with an application connection on which the
    digest functions and the fence (guard triggers) are installed, as a reshard has them."""

    source: Node
    target: Node
    src: psycopg.Connection[tuple[object, ...]]
    dst: psycopg.Connection[tuple[object, ...]]
    table: TableSpec


@contextmanager
def source_and_target(cluster: Cluster) -> Iterator[Pair]:
    """The two primaries of a 2-shard ``cluster``, connected and prepared (see :class:`Pair`)."""
    source, target = cluster.topology.primaries()
    creds = cluster.credentials()
    with pg.connect(source, creds, "app") as src, pg.connect(target, creds, "app") as dst:
        for conn in (src, dst):
            digest.prepare(conn)
            ddl.install(conn, cluster.topology.spec.tables)
        yield Pair(source, target, src, dst, cluster.topology.spec.tables[0])


def baseline(cluster: Cluster) -> Callable[[], None]:
    """A fresh connection to every node at once and `SELECT 1`: what any status must do."""
    login = cluster.credentials()

    def one(node: Node) -> Callable[[], None]:
        def run() -> None:
            with pg.connect(node, login, "postgres") as conn:
                conn.execute("SELECT 1")

        return run

    def run_all() -> None:
        fanout.gather({n.name: one(n) for n in cluster.topology.nodes}, timeout=10)

    return run_all


def cli(*args: str) -> Callable[[], None]:
    """The real CLI in a new interpreter, as a user runs it; raises when it fails."""

    def run() -> None:
        done = subprocess.run(
            [sys.executable, "-m", "shardctl", *args], capture_output=True, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(done.stderr.decode())

    return run


def raw_pipe_seconds(source: Node, target: Node, creds: Credentials) -> tuple[int, float]:
    """Rows and seconds of one binary ``COPY users TO STDOUT | COPY ... FROM STDIN`` of every
    row of ``source`` into a scratch table on ``target`` (dropped after): a reshard copy's
    baseline. The scratch table has no trigger and no ring-position index, so the baseline pays
    for nothing of shardctl's. The rows go through :func:`shardctl.state.resync.pipe`, the
    client loop a reshard's copy uses (writes gathered to ~128 kB): a row-by-row loop would
    make the baseline pay the client's per-row cost that the copy no longer pays.
    """
    with pg.connect(source, creds, "app") as src, pg.connect(target, creds, "app") as dst:
        dst.execute("DROP TABLE IF EXISTS bench_copy")
        dst.execute("CREATE TABLE bench_copy (LIKE users INCLUDING ALL)")
        started = time.perf_counter()
        with dst.cursor() as cur:
            resync.pipe(
                src,
                sql.SQL("COPY users TO STDOUT (FORMAT binary)"),
                cur,
                sql.Identifier("bench_copy"),
            )
        seconds = time.perf_counter() - started
        row = dst.execute("SELECT count(*) FROM bench_copy").fetchone()
        dst.execute("DROP TABLE bench_copy")
    return (int(str(row[0])) if row else 0), seconds


def phase_lines(report: dict[str, object], total: float) -> list[str]:
    """The reshard report's ``phase_seconds`` as lines, each with its share of ``total``."""
    phases = report.get("phase_seconds") or {}
    assert isinstance(phases, dict)
    lines = [f"  {name:<24} {float(s):6.2f}s {float(s) / total:6.1%}" for name, s in phases.items()]
    # "phase/step" names a part of a phase, already counted in the phase.
    rest = total - sum(float(s) for name, s in phases.items() if "/" not in name)
    lines.append(f"  {'outside the phases':<24} {rest:6.2f}s {rest / total:6.1%}")
    return lines
