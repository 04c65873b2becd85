"""``shardctl load`` against PostgreSQL's own pgbench, on the same cluster, in the same run.

    python benchmarks/load_vs_pgbench.py [--clients 16] [--seconds 10] [--repeat 3]
                                         [--users 1000,5000,10000] [--users-seconds 30]
                                         [--topology FILE]

Brings up a 4 shards x 1 replica cluster (test image; removed afterwards) unless ``--topology``
names a running one. Then, interleaved, best of ``--repeat`` rounds:

- **pgbench**, the image's own binary (``/usr/lib/postgresql/15/bin/pgbench``), in one sibling
  container per primary on the host's network, so it reaches each primary through its
  published port exactly as ``shardctl load`` does; ``--clients`` spread evenly over the
  primaries, extended protocol (what psycopg sends), as the application role;
- **shardctl load** (the real CLI) with ``--workers`` equal to ``--clients`` and the same mix;
- insert-only, also **psycopg alone** (no Router, no fence) with as many threads, or as many
  coroutines on async pools, as the ceiling of any client written in Python on this machine;

first insert-only (the upsert ``load`` sends, with a fresh ``gen_random_uuid()`` key), then the
mix equal to ``load``'s default (insert 30, read 40, update 20, delete 10; pgbench's reads,
updates and deletes hit rows preloaded with ``md5(n)::uuid`` keys, ``load``'s hit its own).
Prints ops/s of each and the ratio load/pgbench, then the seed-style table of ``shardctl load
--users`` at 1,000 / 5,000 / 10,000 virtual users (``--users-seconds`` each, and the share of
inserts: every new user's first op is one).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import docker
from _cluster import temp_cluster
from docker.models.containers import Container
from load_models import raw_asyncio, raw_threads

from shardctl.db import pg
from shardctl.ops.cluster import Cluster

PGBENCH = "/usr/lib/postgresql/15/bin/pgbench"
PRELOAD = 50_000
"""Rows per primary that pgbench's reads, updates and deletes pick from."""

UPSERT = (
    "INSERT INTO users (id, first_name, last_name, email) VALUES (gen_random_uuid(), "
    "'first_name-x', 'last_name-x', 'email-x') ON CONFLICT (id) DO UPDATE SET "
    "first_name = EXCLUDED.first_name, last_name = EXCLUDED.last_name, "
    "email = EXCLUDED.email, updated_at = now();\n"
)
SCRIPTS = {
    "insert": UPSERT,
    # Reads, updates and deletes pick a preloaded key, md5(n)::uuid for n up to PRELOAD.
    "read": "\\set n random(1, 50000)\n"
    "SELECT first_name, last_name, email FROM users WHERE id = md5(:n::text)::uuid;\n",
    "update": "\\set n random(1, 50000)\n"
    "UPDATE users SET first_name = 'f-y', last_name = 'l-y', email = 'e-y', updated_at = now()"
    " WHERE id = md5(:n::text)::uuid;\n",
    "delete": "\\set n random(1, 50000)\nDELETE FROM users WHERE id = md5(:n::text)::uuid;\n",
}
MIXES = {
    "insert-only": {"insert": 100},
    "default mix": {"insert": 30, "read": 40, "update": 20, "delete": 10},
}


def preload(cluster: Cluster) -> None:
    """Give every primary the rows pgbench's reads, updates and deletes pick from."""
    statement = (
        "INSERT INTO users (id, first_name, last_name, email)"
        " SELECT md5(n::text)::uuid, 'f', 'l', 'e' "
        "FROM generate_series(1, %s) n ON CONFLICT (id) DO NOTHING"
    )
    for node in cluster.topology.primaries():
        with pg.connect(node, cluster.credentials(), cluster.topology.spec.database) as conn:
            conn.execute(statement, (PRELOAD,))


def pgbench(cluster: Cluster, mix: dict[str, int], clients: int, seconds: float) -> float:
    """Transactions per second of pgbench over all primaries (``clients`` spread over them)."""
    primaries = cluster.topology.primaries()
    folder = Path(tempfile.mkdtemp(prefix="shardctl-pgbench-"))
    folder.chmod(0o755)
    args: list[str] = []
    for op, weight in mix.items():
        (folder / f"{op}.sql").write_text(SCRIPTS[op], encoding="utf-8")
        (folder / f"{op}.sql").chmod(0o644)
        args += ["-f", f"/bench/{op}.sql@{weight}"]
    client = docker.from_env()
    image = cluster.topology.spec.image
    started: list[Container] = []
    try:
        for i, node in enumerate(primaries):
            share = clients // len(primaries) + (1 if i < clients % len(primaries) else 0)
            started.append(
                client.containers.run(
                    image,
                    [PGBENCH, "-n", "-M", "extended", "-T", str(int(seconds)), "-c", str(share),
                     "-j", str(share), "-h", node.placement.advertise, "-p", str(node.host_port),
                     "-U", cluster.credentials().app_user, *args, cluster.topology.spec.database],
                    name=f"{node.container}-pgbench",
                    entrypoint=[],
                    network_mode="host",
                    user="postgres",
                    environment={"PGPASSWORD": cluster.credentials().app_password or ""},
                    volumes={str(folder): {"bind": "/bench", "mode": "ro"}},
                    detach=True,
                )
            )  # fmt: skip
        total = 0.0
        for container in started:
            status = container.wait(timeout=seconds + 60)
            out = container.logs().decode(errors="replace")
            found = re.search(r"tps = ([\d.]+) \(without initial connection time\)", out)
            if status.get("StatusCode") != 0 or found is None:
                raise SystemExit(f"pgbench failed on {container.name}:\n{out}")
            total += float(found.group(1))
        return total
    finally:
        for container in started:
            container.remove(force=True)
        shutil.rmtree(folder, ignore_errors=True)


def load(topology: Path, *args: str) -> dict[str, object]:
    """The JSON report of one ``shardctl load`` run (the real CLI, in a subprocess)."""
    done = subprocess.run(
        [sys.executable, "-m", "shardctl", "load", "-f", str(topology), *args, "-o", "json"],
        capture_output=True, text=True, check=False, timeout=900,
    )  # fmt: skip
    if done.returncode not in (0, 1):
        raise SystemExit(f"shardctl load {' '.join(args)} failed:\n{done.stderr}")
    report: dict[str, object] = json.loads(done.stdout)
    return report


def mix_arg(mix: dict[str, int]) -> str:
    """``load --mix`` for ``mix``."""
    return ",".join(f"{op}={weight}" for op, weight in mix.items())


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def run(
    cluster: Cluster,
    clients: int,
    seconds: float,
    repeat: int,
    users: list[int],
    users_seconds: float,
) -> None:
    """The interleaved comparison, then the virtual-user table."""
    preload(cluster)
    path = cluster.topology.path
    print(
        f"# {clients} clients/workers, {seconds:g} s per run, best of {repeat}, interleaved "
        f"(load average {_load()})"
    )
    infos = [
        pg.conninfo(n, cluster.credentials(), cluster.topology.spec.database)
        for n in cluster.topology.primaries()
    ]
    print(
        f"{'mix':<12} {'pgbench/s':>10} {'psycopg thr/s':>14} {'psycopg aio/s':>14} "
        f"{'load/s':>8} {'load/pgbench':>13} {'psycopg/pgbench':>16}"
    )
    for name, mix in MIXES.items():
        best = dict.fromkeys(("pgbench", "threads", "asyncio", "load"), 0.0)
        for _ in range(repeat):
            best["pgbench"] = max(best["pgbench"], pgbench(cluster, mix, clients, seconds))
            if name == "insert-only":
                # The Python client alone (no Router, no fence): the ceiling for load.
                done = raw_threads(infos, clients, clients, seconds)
                best["threads"] = max(best["threads"], done / seconds)
                done = raw_asyncio(infos, clients, clients, seconds)
                best["asyncio"] = max(best["asyncio"], done / seconds)
            report = load(
                path, "--workers", str(clients), "--duration", str(seconds), "--mix", mix_arg(mix)
            )
            best["load"] = max(best["load"], float(str(report["throughput"])))
        raw = max(best["threads"], best["asyncio"])
        print(
            f"{name:<12} {best['pgbench']:>10,.0f} {best['threads']:>14,.0f} "
            f"{best['asyncio']:>14,.0f} {best['load']:>8,.0f} "
            f"{best['load'] / best['pgbench']:>13.2f} "
            + (f"{raw / best['pgbench']:>16.2f}" if raw else f"{'-':>16}")
        )
    if users:
        print(
            f"\n# shardctl load --users {','.join(map(str, users))} --workers {clients} "
            f"--duration {users_seconds:g}, default mix (load average {_load()})"
        )
        print(
            f"{'users':>7} {'ops':>8} {'ops/s':>8} {'success':>8} {'mean ms':>8} "
            f"{'p50':>8} {'p95':>8} {'p99':>8} {'inserts':>8}"
        )
        report = load(
            path, "--users", ",".join(map(str, users)), "--workers", str(clients),
            "--duration", str(users_seconds),
        )  # fmt: skip
        for row in report["steps"]:  # type: ignore[attr-defined]
            total = row["total"]
            inserts = next(r["ops"] for r in row["per_op"] if r["op"] == "insert")
            print(
                f"{row['users']:>7,} {total['ops']:>8,} {total['throughput']:>8,.0f} "
                f"{total['success_rate'] * 100:>7.2f}% {total['mean_ms']:>8.1f} "
                f"{total['p50_ms']:>8.1f} {total['p95_ms']:>8.1f} {total['p99_ms']:>8.1f} "
                f"{inserts / max(1, total['ops']):>8.0%}"
            )


def main() -> None:
    """Parse options, bring a cluster up (or use --topology), compare."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--users", default="1000,5000,10000")
    parser.add_argument("--users-seconds", type=float, default=30.0)
    parser.add_argument("--topology", type=Path, default=None)
    args = parser.parse_args()
    users = [int(u) for u in args.users.split(",") if u.strip()]
    started = time.monotonic()
    with ExitStack() as stack:
        if args.topology is not None:
            cluster = stack.enter_context(Cluster.load(args.topology))
        else:
            cluster = stack.enter_context(temp_cluster(shards=4, replicas=1))
        run(cluster, args.clients, args.seconds, args.repeat, users, args.users_seconds)
    print(f"# {time.monotonic() - started:.0f} s in all (load average {_load()})")


if __name__ == "__main__":
    main()
