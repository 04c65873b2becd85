"""What ``tls: required`` costs: new connections and Router writes, against the same cluster
shape without TLS, in the same run.

    python benchmarks/tls.py [--connections N] [--writes N] [--repeat R] [--name-prefix P]

Brings up two 1-shard x 0-replica clusters (test image), one with ``tls: required``, and
removes both afterwards. Each round, interleaved over both clusters: ``--connections`` new
connections (connect, ``SELECT 1``, close) as the application role, the way a Router's pool
opens them (verify-full against the cluster CA with TLS); then ``--writes`` single-row inserts
through ``Router.execute`` on one thread (pooled connections: the TLS cost of the traffic
itself). Best of ``--repeat`` rounds; the ratios are TLS / plaintext.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
from _cluster import REPO  # noqa: F401  (puts the repository on sys.path)

from shardctl import Router
from shardctl.config.credentials import Login
from shardctl.db import pg
from shardctl.ops.cluster import Cluster
from tests.clusters import make_topology, running

INSERT = "INSERT INTO users (id, first_name, email) VALUES (%s, 'bench', 'bench@x')"


def connections_per_second(cluster: Cluster, count: int) -> float:
    """New application-role connections per second (connect, one query, close)."""
    node = cluster.topology.primaries()[0]
    info = pg.conninfo(node, cluster.credentials(), cluster.topology.spec.database, login=Login.APP)
    started = time.perf_counter()
    for _ in range(count):
        with psycopg.connect(info, autocommit=True) as conn:
            conn.execute("SELECT 1")
    return count / (time.perf_counter() - started)


def writes_per_second(router: Router, count: int) -> float:
    """Single-row inserts per second through the Router, on one thread."""
    keys = [uuid.uuid4() for _ in range(count)]
    started = time.perf_counter()
    for key in keys:
        router.execute(key, INSERT, (key,))
    return count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=200)
    parser.add_argument("--writes", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--name-prefix", default="bench", help="of both clusters' names")
    args = parser.parse_args()
    tag = uuid.uuid4().hex[:6]
    folder = Path(tempfile.mkdtemp(prefix="shardctl-bench-tls-"))
    try:
        (folder / "plain").mkdir()
        (folder / "tls").mkdir()
        plain_path = make_topology(
            folder / "plain", 1, 0, cluster=f"{args.name_prefix}-plain-{tag}"
        )
        tls_path = make_topology(
            folder / "tls", 1, 0, cluster=f"{args.name_prefix}-tls-{tag}", tls="required"
        )
        print("# bringing up 1 shard x 0 replicas, twice (plaintext, tls: required)")
        with running(plain_path) as plain, running(tls_path) as tls:
            best: dict[str, dict[str, float]] = {"plain": {}, "tls": {}}
            with Router(plain) as plain_router, Router(tls) as tls_router:
                for _ in range(args.repeat):
                    for name, cluster, router in (
                        ("plain", plain, plain_router),
                        ("tls", tls, tls_router),
                    ):
                        rates = {
                            "connections/s": connections_per_second(cluster, args.connections),
                            "router writes/s": writes_per_second(router, args.writes),
                        }
                        for what, value in rates.items():
                            best[name][what] = max(best[name].get(what, 0.0), value)
            print(f"{'':18} {'plaintext':>10} {'tls':>10} {'tls/plain':>10}")
            for what in ("connections/s", "router writes/s"):
                p, t = best["plain"][what], best["tls"][what]
                print(f"{what:18} {p:10.0f} {t:10.0f} {t / p:9.2f}x")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
