"""``shardctl load`` against PostgreSQL's own pgbench, through the same published ports, with
the same number of clients, on the same cluster, in the same run.

    python benchmarks/load_vs_pgbench.py [--clients 16] [--seconds 10] [--repeat 3]
                                         [--mixes insert-only,default] [--protocol prepared]
                                         [--pipelines 8,1] [--in-container] [--raw]
                                         [--engines loop,threads] [--loops 1,4]
                                         [--before CHECKOUT]
                                         [--users 1000,5000,10000] [--users-seconds 30]
                                         [--topology FILE]

Brings up a 4 shards x 1 replica cluster (test image; removed afterwards) unless ``--topology``
names a running one. Then, interleaved, ``--repeat`` rounds of:

- **pgbench on the host** (``/usr/bin/pgbench``, a process of this machine like ``shardctl
  load``): one pgbench per primary, all started together, each with its share of
  ``--clients`` (4 per primary for 16; one connection and one thread per client), connecting
  to the primary's published port (``127.0.0.1:<host port>``, the docker-proxy path ``load``
  takes), as the application role, ``-M prepared`` by default (``load`` prepares its
  statements on direct connections too; ``--protocol extended`` for unnamed statements);
- **shardctl load** (the real CLI, in a subprocess) with ``--workers`` equal to ``--clients``
  and the same mix, once per ``--pipelines`` value (``--pipeline 1``: one op per connection at
  a time; 0: no ``--pipeline`` flag, for a ``load`` without), and with ``--pipeline 1`` once
  per ``--engines`` value (``load --engine``; none given: no ``--engine`` flag), the loop
  engine once per ``--loops`` value (``load --loops``; none given: no ``--loops`` flag);
- with ``--in-container``, the former baseline too: the image's pgbench in one sibling
  container per primary on the host's network;
- with ``--before``, ``shardctl load --pipeline 1`` of another checkout of shardctl (its
  folder, e.g. a ``git worktree`` of main), beside this one's: before and after a change in
  the same rounds (its start-up is taken as this one's);
- with ``--raw``, insert-only, psycopg alone (no Router, no fence) with as many threads and as
  many coroutines as clients.

The ``load`` runs of a round take turns at going first after pgbench (round 2 starts with the
second).

Insert-only is ``load``'s upsert of the same row shape into the same table: a fresh uuid key
(``gen_random_uuid()`` for pgbench, uuid4 for ``load``) and three text values
``<column>-<12 hex digits>`` from a random 48-bit number. The default mix is ``load``'s
(insert 30, read 40, update 20, delete 10; pgbench's reads, updates and deletes hit rows
preloaded with ``md5(n)::uuid`` keys, ``load``'s hit its own). Prints ops/s of each per round,
the ratio load/pgbench per round and its median, the client's CPU per op (the median over
rounds: pgbench's processes, and ``load``'s less its start-up, measured first with ``--ops
1``), then optionally the seed-style table of ``shardctl load --users`` (``--users-seconds``
each).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
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

from shardctl.config import addresses
from shardctl.db import pg
from shardctl.ops.cluster import Cluster

HOST_PGBENCH = "/usr/bin/pgbench"
IMAGE_PGBENCH = "/usr/lib/postgresql/15/bin/pgbench"
PRELOAD = 50_000
"""Rows per primary that pgbench's reads, updates and deletes pick from."""

UPSERT = (
    "\\set r random(0, 281474976710655)\n"
    "INSERT INTO users (id, first_name, last_name, email) VALUES (gen_random_uuid(), "
    "'first_name-' || lpad(to_hex(:r::bigint), 12, '0'), "
    "'last_name-' || lpad(to_hex(:r::bigint), 12, '0'), "
    "'email-' || lpad(to_hex(:r::bigint), 12, '0')) ON CONFLICT (id) DO UPDATE SET "
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
    "default": {"insert": 30, "read": 40, "update": 20, "delete": 10},
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


def _scripts(folder: Path, mix: dict[str, int], inside: str) -> list[str]:
    """Write ``mix``'s pgbench scripts into ``folder``; the ``-f`` arguments naming them as
    seen from ``inside`` (the folder's path for pgbench)."""
    args: list[str] = []
    for op, weight in mix.items():
        (folder / f"{op}.sql").write_text(SCRIPTS[op], encoding="utf-8")
        (folder / f"{op}.sql").chmod(0o644)
        args += ["-f", f"{inside}/{op}.sql@{weight}"]
    return args


def _shares(clients: int, count: int) -> list[int]:
    """``clients`` spread evenly over ``count`` primaries (the first get one more)."""
    return [clients // count + (1 if i < clients % count else 0) for i in range(count)]


def _tps(out: str, where: str) -> float:
    found = re.search(r"tps = ([\d.]+) \(without initial connection time\)", out)
    if found is None:
        raise SystemExit(f"pgbench failed on {where}:\n{out}")
    return float(found.group(1))


def pgbench_host(
    cluster: Cluster, mix: dict[str, int], clients: int, seconds: float, protocol: str
) -> float:
    """Transactions per second of the host's pgbench (:data:`HOST_PGBENCH`) over all primaries:
    one pgbench per primary, started together, each with its share of ``clients`` (one
    connection each), reaching it through its published port as ``shardctl load`` does."""
    primaries = cluster.topology.primaries()
    login = cluster.credentials()
    folder = Path(tempfile.mkdtemp(prefix="shardctl-pgbench-"))
    args = _scripts(folder, mix, str(folder))
    env = {**os.environ, "PGPASSWORD": login.app_password or "", "PGCONNECT_TIMEOUT": "5"}
    procs: list[subprocess.Popen[str]] = []
    try:
        for node, share in zip(primaries, _shares(clients, len(primaries)), strict=True):
            if share == 0:
                continue
            host, port = addresses.address(node, "direct")
            procs.append(
                subprocess.Popen(
                    [HOST_PGBENCH, "-n", "-M", protocol, "-T", str(int(seconds)),
                     "-c", str(share), "-j", str(share), "-h", host, "-p", str(port),
                     "-U", login.app_user, *args, cluster.topology.spec.database],
                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                )
            )  # fmt: skip
        return sum(_tps(p.communicate(timeout=seconds + 60)[0], str(p.args)) for p in procs)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        shutil.rmtree(folder, ignore_errors=True)


def pgbench_containers(
    cluster: Cluster, mix: dict[str, int], clients: int, seconds: float, protocol: str
) -> float:
    """The former baseline: the image's own pgbench, in one sibling container per primary on
    the host's network (another pgbench build, run inside a container's cgroup)."""
    primaries = cluster.topology.primaries()
    folder = Path(tempfile.mkdtemp(prefix="shardctl-pgbench-"))
    folder.chmod(0o755)
    args = _scripts(folder, mix, "/bench")
    client = docker.from_env()
    image = cluster.topology.spec.image
    started: list[Container] = []
    try:
        for node, share in zip(primaries, _shares(clients, len(primaries)), strict=True):
            started.append(
                client.containers.run(
                    image,
                    [IMAGE_PGBENCH, "-n", "-M", protocol, "-T", str(int(seconds)),
                     "-c", str(share), "-j", str(share), "-h", node.placement.advertise,
                     "-p", str(node.host_port), "-U", cluster.credentials().app_user, *args,
                     cluster.topology.spec.database],
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
            if status.get("StatusCode") != 0:
                raise SystemExit(f"pgbench failed on {container.name}:\n{out}")
            total += _tps(out, str(container.name))
        return total
    finally:
        for container in started:
            container.remove(force=True)
        shutil.rmtree(folder, ignore_errors=True)


def children_cpu() -> float:
    """CPU seconds of this process's finished children so far (user and system)."""
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def load(topology: Path, *args: str, tree: Path | None = None) -> dict[str, object]:
    """The JSON report of one ``shardctl load`` run (the real CLI, in a subprocess), with the
    CPU seconds the process used as ``cpu``; ``tree``: the shardctl of another checkout."""
    used = children_cpu()
    env = None if tree is None else {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run(
        [sys.executable, "-m", "shardctl", "load", "-f", str(topology.resolve()), *args,
         "-o", "json"],
        capture_output=True, text=True, check=False, timeout=900, cwd=tree, env=env,
    )  # fmt: skip
    if done.returncode not in (0, 1):
        raise SystemExit(f"shardctl load {' '.join(args)} failed:\n{done.stderr}")
    report: dict[str, object] = json.loads(done.stdout)
    report["cpu"] = children_cpu() - used
    return report


def _column(pipe: int, engine: str, loops: int = 0) -> str:
    if loops:
        return f"load {engine}x{loops}"
    return f"load {engine}" if engine else f"load p{pipe}" if pipe else "load"


def _head(tree: Path) -> str:
    done = subprocess.run(
        ["git", "-C", str(tree), "rev-parse", "--short", "HEAD"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return done.stdout.strip() or "?"


def mix_arg(mix: dict[str, int]) -> str:
    """``load --mix`` for ``mix``."""
    return ",".join(f"{op}={weight}" for op, weight in mix.items())


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def median_ratio(rounds: list[dict[str, float]], name: str) -> float:
    """The median over rounds of ``name`` / pgbench (each round's own pgbench)."""
    return statistics.median(r[name] / r["pgbench"] for r in rounds if r["pgbench"])


def run(cluster: Cluster, args: argparse.Namespace) -> None:
    """The interleaved comparison, then the virtual-user table."""
    if any(op != "insert" for name in args.mixes.split(",") for op in MIXES[name]):
        preload(cluster)
    path = cluster.topology.path
    clients, seconds = args.clients, args.seconds
    pipelines = [int(p) for p in args.pipelines.split(",") if p.strip()]
    engines = [e.strip() for e in args.engines.split(",") if e.strip()] or [""]
    loops = [int(n) for n in args.loops.split(",") if n.strip()] or [0]
    print(
        f"# {clients} clients/workers, {seconds:g} s per run, {args.repeat} interleaved rounds, "
        f"pgbench -M {args.protocol} (load average {_load()})"
    )
    infos = [
        pg.conninfo(n, cluster.credentials(), cluster.topology.spec.database)
        for n in cluster.topology.primaries()
    ]
    # What a load process costs before its run (imports, catalog reads): left out of its
    # CPU per op below.
    startup = statistics.median(
        float(str(load(path, "--ops", "1", "--mix", "insert=100")["cpu"])) for _ in range(3)
    )
    print(f"# shardctl load start-up: {startup:.2f} CPU s (left out of CPU per op)")
    other: Path | None = args.before
    if other is not None:
        print(f"# 'before p1': shardctl load --pipeline 1 of {other} (git HEAD {_head(other)})")
    for name in args.mixes.split(","):
        mix = MIXES[name]
        columns = ["pgbench"] + (["in-container"] if args.in_container else [])
        runs = [
            (p, e, n)
            for p in pipelines
            for e in (engines if p == 1 else [""])
            for n in (loops if e == "loop" else [0])
        ]
        columns += [_column(p, e, n) for p, e, n in runs]
        columns += ["before p1"] if other is not None else []
        if args.raw and name == "insert-only":
            columns += ["psycopg thr", "psycopg aio"]
        print(f"\n## {name} (ops/s; ratio = x / host pgbench, same round)")
        print(f"{'round':<6} {'load avg':>9} " + " ".join(f"{c:>13}" for c in columns))
        rounds: list[dict[str, float]] = []
        cpu: dict[str, list[float]] = {c: [] for c in columns}
        for i in range(args.repeat):
            got: dict[str, float] = {}
            before = _load()
            used = children_cpu()
            got["pgbench"] = pgbench_host(cluster, mix, clients, seconds, args.protocol)
            cpu["pgbench"].append((children_cpu() - used) / (got["pgbench"] * seconds))
            if args.in_container:
                got["in-container"] = pgbench_containers(
                    cluster, mix, clients, seconds, args.protocol
                )
            # The load runs take turns at going first after pgbench (round 2 starts with the
            # second, ...): a run right after pgbench may meet its aftermath (checkpoint,
            # autovacuum), which must not always fall on the same one.
            jobs: list[tuple[str, list[str], Path | None]] = [
                (_column(pipe, engine, n),
                 [*(["--pipeline", str(pipe)] if pipe else []),
                  *(["--engine", engine] if engine else []),
                  *(["--loops", str(n)] if n else [])], None)
                for pipe, engine, n in runs
            ]  # fmt: skip
            if other is not None:
                jobs.append(("before p1", ["--pipeline", "1"], other))
            turn = i % len(jobs) if jobs else 0
            for column, extra, tree in jobs[turn:] + jobs[:turn]:
                report = load(
                    path, "--workers", str(clients), "--duration", str(seconds),
                    "--mix", mix_arg(mix), *extra, tree=tree,
                )  # fmt: skip
                got[column] = float(str(report["throughput"]))
                spent = float(str(report["cpu"])) - startup
                cpu[column].append(spent / max(1, int(str(report["ops"]))))
            if args.raw and name == "insert-only":
                got["psycopg thr"] = raw_threads(infos, clients, clients, seconds) / seconds
                got["psycopg aio"] = raw_asyncio(infos, clients, clients, seconds) / seconds
            rounds.append(got)
            print(
                f"{i + 1:<6} {before.split()[0]:>9} "
                + " ".join(f"{got[c]:>13,.0f}" for c in columns)
            )
            print(
                f"{'ratio':<6} {'':>9} "
                + " ".join(f"{got[c] / got['pgbench']:>13.2f}" for c in columns)
            )
        print(
            f"{'median':<6} {'':>9} "
            + " ".join(f"{median_ratio(rounds, c):>13.2f}" for c in columns)
            + f"   (load average now {_load()})"
        )
        print(
            f"{'CPU us/op':<16} "
            + " ".join(
                f"{statistics.median(cpu[c]) * 1e6:>13,.0f}" if cpu[c] else f"{'-':>13}"
                for c in columns
            )
            + "   (the client process's, median over rounds)"
        )
    if args.users:
        users = [int(u) for u in args.users.split(",") if u.strip()]
        users_table(path, users, clients, args.users_seconds)


def users_table(path: Path, users: list[int], clients: int, users_seconds: float) -> None:
    """The seed-style table of ``shardctl load --users``."""
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
    parser.add_argument("--mixes", default="insert-only,default")
    parser.add_argument("--protocol", choices=("prepared", "extended"), default="prepared")
    parser.add_argument("--pipelines", default="8,1")
    parser.add_argument("--in-container", action="store_true")
    parser.add_argument("--engines", default="")
    parser.add_argument("--loops", default="")
    parser.add_argument("--raw", action="store_true")
    parser.add_argument("--before", type=Path, default=None)
    parser.add_argument("--users", default="")
    parser.add_argument("--users-seconds", type=float, default=30.0)
    parser.add_argument("--topology", type=Path, default=None)
    args = parser.parse_args()
    started = time.monotonic()
    with ExitStack() as stack:
        if args.topology is not None:
            cluster = stack.enter_context(Cluster.load(args.topology))
        else:
            cluster = stack.enter_context(temp_cluster(shards=4, replicas=1))
        run(cluster, args)
    print(f"# {time.monotonic() - started:.0f} s in all (load average {_load()})")


if __name__ == "__main__":
    main()
