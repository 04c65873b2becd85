"""Backups measured: base backup rate against raw pg_basebackup, the point's write pause under
load, RPO under steady writes, and restore time against backup time.

    DOCKER_HOST=... python benchmarks/backup.py [--shards 4] [--rows 1000000] [--rounds 2]
                                                [--points 5] [--load-seconds 60]

Brings up a throw-away cluster (``--shards`` x 1 replica, ``backup: {repository: ...}``), fills
it with ``shardctl load --bulk --rows``, then, in one run:

1. **Base backup rate**, ``--rounds`` times, in turns (raw first in even rounds, ``shardctl
   backup`` first in odd ones, so that neither order is favoured): a raw
   ``pg_basebackup`` of every shard at once (the same source replica, run in the same backup
   node, into the same repository disk, the same options: ``-X stream --checkpoint=fast``, a
   manifest with CRC32C checksums, the default), each then checked with ``pg_verifybackup``,
   against ``shardctl backup``. Ratios: the copy's rate (bytes over pg_basebackup's own time,
   like with like), the whole command's (which adds interpreter start-up, finding the
   primaries, the records, the progress readings, the checks and a point), and like with like
   for the whole of the work: shardctl's copies and checks (its record's start to finish)
   against the raw copies each followed by pg_verifybackup.
2. **The point's write pause** under ``shardctl load`` (Router traffic): ``--points`` times
   ``shardctl backup --point``, its reported pause, and (when the command reports them) its
   parts per primary: the hold + point round trip, the server's locking and pointing in it,
   and the moment it let writes go on.
3. **RPO** during the same load: every 0.5 s, the scrape's archiving facts per shard
   (``shardctl_backup_wal_lag_seconds``: age of the newest archived WAL while WAL waits).
4. **Restore against backup**: ``down --volumes``, then ``restore --to`` the last point, wall
   time against the last ``shardctl backup``'s wall time; the rows counted after.

Prints the numbers; removes the cluster. Timings on a shared machine: read the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from functools import partial

from _cluster import temp_cluster

from shardctl.db import pg
from shardctl.docker.specs import PASSFILE
from shardctl.health.scrape import Scraper
from shardctl.ops.backup import archiving
from shardctl.ops.backup.base import source
from shardctl.ops.backup.listing import repository_times
from shardctl.ops.backup.repository import Repository
from shardctl.ops.cluster import Cluster
from shardctl.util import fanout


def shardctl(*args: str, timeout: float = 1800) -> tuple[subprocess.CompletedProcess[str], float]:
    """The real CLI; its result and wall time (raises when it fails)."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "shardctl", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )
    took = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"shardctl {' '.join(args)}: {done.stdout}{done.stderr}")
    return done, took


def raw_backups(cluster: Cluster, folder: str) -> tuple[float, float, dict[str, tuple[int, float]]]:
    """pg_basebackup of every shard at once, as ``backup`` runs it (the same options but the
    manifest's checksum, CRC32C, left at its default, which is CRC32C), each then checked with
    pg_verifybackup; wall time of the copies alone (all done), wall time of copies and checks,
    and per shard (bytes, seconds of the copy). Removed afterwards."""
    topology, engines = cluster.topology, cluster.engines
    repository = Repository.of(topology)
    found = engines.named(archiving.container_name(topology), repository.placement)
    assert found is not None
    container = found
    login = cluster.credentials()

    copies_done: list[float] = []

    def one(shard: str) -> tuple[int, float]:
        node = source(topology, login, shard)
        host, port = archiving.reach(topology, repository, node)
        # Beside the shard's base backups: the folder the backup node may write.
        inside = f"/repository/{topology.cluster}/{shard}/base/{folder}"
        started = time.perf_counter()
        code, output = engines.run_in(
            container,
            ["pg_basebackup", "-D", inside, "-h", host, "-p", str(port),
             "-U", topology.spec.credentials.replication_user, "-w", "-X", "stream",
             "--checkpoint=fast"],
            environment={"PGPASSFILE": PASSFILE, "PGAPPNAME": "bench-raw"},
        )  # fmt: skip
        took = time.perf_counter() - started
        copies_done.append(time.perf_counter())
        if code != 0:
            raise RuntimeError(output)
        _, du = engines.run_in(container, ["du", "-sb", inside])
        code, output = engines.run_in(container, ["pg_verifybackup", "-q", inside])
        if code != 0:
            raise RuntimeError(output)
        return int(du.split()[0]), took

    started = time.perf_counter()
    results = fanout.gather({s.name: partial(one, s.name) for s in topology.spec.shards})
    wall = time.perf_counter() - started
    copy_wall = max(copies_done, default=started + wall) - started
    for spec in topology.spec.shards:
        engines.run_in(
            container, ["rm", "-rf", f"/repository/{topology.cluster}/{spec.name}/base/{folder}"]
        )
    out: dict[str, tuple[int, float]] = {}
    for shard, result in results.items():
        if isinstance(result, BaseException):
            raise result
        out[shard] = result
    return copy_wall, wall, out


def users(cluster: Cluster) -> int:
    """Rows of ``users`` on every acting primary."""
    counted = 0
    for primary in cluster.topology.primaries():
        with pg.connect(primary, cluster.credentials(), "app") as conn:
            row = conn.execute("SELECT count(*) FROM users").fetchone()
            counted += int(str(row[0])) if row else 0
    return counted


def mib(n: float) -> str:
    return f"{n / 1024**2:,.1f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--points", type=int, default=5)
    parser.add_argument("--load-seconds", type=float, default=60.0)
    args = parser.parse_args()

    with temp_cluster(shards=args.shards, replicas=1, backup={"repository": "repository"}) as c:
        path = str(c.topology.path)
        started = time.perf_counter()
        have, failures = 0, 0
        while have < args.rows:  # in chunks, again after a failure (a loaded machine)
            try:
                chunk = min(250_000, args.rows - have)
                shardctl("load", "-f", path, "--bulk", "--rows", str(chunk))
            except RuntimeError as exc:
                failures += 1
                if failures > 5:
                    raise
                print(f"# bulk chunk failed, again: {str(exc).strip().splitlines()[-1]}")
            have = users(c)
        took = time.perf_counter() - started
        print(f"# {have:,} users bulk-loaded in {took:.1f} s")

        # 1. base backup rate, in turns: raw first in even rounds, shardctl first in odd ones
        # (the second copy of a round finds the source's files in its page cache)
        rows: list[tuple[str, float, float, int]] = []  # kind, copy rate, whole rate, bytes
        checked: list[float] = []  # raw copy + pg_verifybackup: rate of the whole
        phases: list[tuple[float, float, float]] = []  # shardctl: start-up, copies, the rest
        backup_wall = 0.0

        def raw_round(round_: int) -> None:
            copy_wall, wall, raw = raw_backups(c, f"raw-bench-{round_}")
            size = sum(b for b, _ in raw.values())
            rows.append(("raw", size / max(s for _, s in raw.values()), size / copy_wall, size))
            checked.append(size / wall)
            print(f"# round {round_}: raw {copy_wall:.1f} s, with pg_verifybackup {wall:.1f} s")

        def ours_round(round_: int) -> None:
            nonlocal backup_wall
            launched = time.time()
            done, backup_wall = shardctl(
                "backup", "--name", f"bench{round_}", "-o", "json", "-f", path
            )
            made = json.loads(done.stdout)["backup"]
            shards = made["shards"].values()
            size = sum(s["size"] for s in shards)
            copy = size / max(s["seconds"] for s in shards)
            rows.append(("shardctl", copy, size / backup_wall, size))
            copies = made["finished"] - made["started"]
            startup = made["started"] - launched
            phases.append((startup, copies, backup_wall - startup - copies))
            print(
                f"# round {round_}: shardctl backup {backup_wall:.1f} s (start-up {startup:.1f}, "
                f"copies + checks {copies:.1f}, point + retention + exit "
                f"{backup_wall - startup - copies:.1f})"
            )

        for round_ in range(args.rounds):
            turns = (raw_round, ours_round) if round_ % 2 == 0 else (ours_round, raw_round)
            for turn in turns:
                turn(round_)
        raw_copy = statistics.median(r[1] for r in rows if r[0] == "raw")
        raw_whole = statistics.median(r[2] for r in rows if r[0] == "raw")
        raw_checked = statistics.median(checked)
        ours_copy = statistics.median(r[1] for r in rows if r[0] == "shardctl")
        ours_whole = statistics.median(r[2] for r in rows if r[0] == "shardctl")
        total = statistics.median(r[3] for r in rows if r[0] == "shardctl")
        copy_ratios = [
            o[1] / r[1]
            for r, o in zip(
                [r for r in rows if r[0] == "raw"],
                [o for o in rows if o[0] == "shardctl"],
                strict=True,
            )
        ]

        # 2 + 3. points and RPO under load
        load = subprocess.Popen(
            [sys.executable, "-m", "shardctl", "load", "-f", path, "--duration",
             str(args.load_seconds), "--workers", "8", "--mix",
             "insert=40,read=20,update=30,delete=10", "-o", "json"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        lags: dict[str, list[float]] = {s.name: [] for s in c.topology.spec.shards}
        stop = threading.Event()
        scraper = Scraper(c.topology, c.engines, c.credentials, repository=repository_times)

        def sample() -> None:
            while not stop.wait(0.5):
                for shard, state in scraper.snapshot().archives.items():
                    if state.lag_seconds is not None:
                        lags[shard].append(state.lag_seconds)

        sampler = threading.Thread(target=sample, daemon=True)
        time.sleep(5.0)  # the load is running
        sampler.start()
        pauses: list[float] = []
        fenced: list[float] = []  # of each pause: fencing and pointing every primary
        prepared: list[float] = []  # before each pause: connections, locks, checks
        held: list[dict[str, float]] = []  # per primary: fence + point round, server parts, lift
        last_point = ""
        for k in range(args.points):
            last_point = f"bench-p{k}"
            done, _ = shardctl("backup", "--point", last_point, "-o", "json", "-f", path)
            made = json.loads(done.stdout)
            pauses.append(float(made["write_pause"]))
            fenced.append(float(made["fenced_seconds"]))
            prepared.append(float(made.get("prepared_seconds", 0.0)))  # absent before 24's cut
            held.extend(made.get("held", {}).values())
            time.sleep(2.0)
        out, _ = load.communicate(timeout=args.load_seconds + 120)
        stop.set()
        sampler.join()
        ops = json.loads(out) if out.strip().startswith("{") else {}

        # 4. restore against backup
        shardctl("down", "--volumes", "--yes", "-f", path)
        _, restore_wall = shardctl("restore", "--to", last_point, "--yes", "-f", path)
        fresh = Cluster.load(c.topology.path)
        counted = users(fresh)
        fresh.close()

    every = [x for v in lags.values() for x in v]
    print(
        f"{args.shards} shards x 1 replica, {args.rows:,} users, load average "
        f"{os.getloadavg()[0]:.0f} ({os.cpu_count()} cpus)"
    )
    print(f"base backup, {mib(total)} in all, median of {args.rounds} interleaved rounds:")
    print(
        f"  raw pg_basebackup   copy {mib(raw_copy)}/s   whole {mib(raw_whole)}/s   "
        f"then pg_verifybackup {mib(raw_checked)}/s"
    )
    print(f"  shardctl backup     copy {mib(ours_copy)}/s   whole {mib(ours_whole)}/s")
    print(
        f"  ratio (shardctl / raw): copy {ours_copy / raw_copy:.2f}x "
        f"(per round {', '.join(f'{r:.2f}' for r in copy_ratios)}), "
        f"whole {ours_whole / raw_whole:.2f}x, "
        f"whole against raw copy + pg_verifybackup {ours_whole / raw_checked:.2f}x"
    )
    work = statistics.median(p[1] for p in phases)
    print(
        f"  like with like: shardctl's copies + checks (its record's start to finish, no start-up "
        f"or point) {mib(total / work)}/s against raw copy + pg_verifybackup "
        f"{mib(raw_checked)}/s: {total / work / raw_checked:.2f}x"
    )
    print(
        "  shardctl backup's wall, median: start-up "
        f"{statistics.median(p[0] for p in phases):.1f} s, copies + checks "
        f"{statistics.median(p[1] for p in phases):.1f} s, point + retention + exit "
        f"{statistics.median(p[2] for p in phases):.1f} s"
    )
    print(
        f"point write pause under load ({len(pauses)} points): median "
        f"{statistics.median(pauses) * 1000:.0f} ms, max {max(pauses) * 1000:.0f} ms "
        f"(hold + point round median {statistics.median(fenced) * 1000:.0f} ms, the rest "
        "letting go); "
        f"load: {ops.get('ops', '?')} ops, {ops.get('failed', '?')} failed"
    )
    if held:
        parts = ("pointed", "hold_server", "point_server", "lifted")
        print(
            f"  before the pause (connect, locks, checks) median "
            f"{statistics.median(prepared) * 1000:.0f} ms; per primary, median of "
            f"{len(held)}: "
            + ", ".join(f"{k} {statistics.median(h[k] for h in held) * 1000:.0f} ms" for k in parts)
        )
    if every:
        print(
            f"RPO (newest archived WAL's age while WAL waits) over {len(every)} samples: median "
            f"{statistics.median(every):.2f} s, p95 {sorted(every)[int(len(every) * 0.95)]:.2f} s, "
            f"max {max(every):.2f} s"
        )
    print(
        f"restore --to {last_point}: {restore_wall:.1f} s vs backup {backup_wall:.1f} s "
        f"({restore_wall / backup_wall:.2f}x); {counted:,} users after"
    )


if __name__ == "__main__":
    main()
