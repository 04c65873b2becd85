"""How long a Prometheus scrape of ``shardctl metrics`` takes, against ``status -o json``.

    DOCKER_HOST=... python benchmarks/metrics_scrape.py [--shards 4] [--rounds 9]

Brings up a throw-away cluster (``--shards`` x 1 replica, the test image, 1,000 rows per
shard) and a ``shardctl metrics --listen`` on a free loopback port, then runs interleaved
rounds of:

- baseline: one fresh connection and ``SELECT 1`` per node, all nodes in parallel;
- status facts in process: what ``status -o json`` reads (``Cluster.observe()``, its rows,
  and ``in_flight()``);
- a scrape in process: ``Scraper.snapshot()`` and the text exposition of its families;
- a scrape over HTTP: ``GET /metrics`` of the running ``metrics --listen`` (what Prometheus
  pays: no interpreter start-up);
- in a subprocess each: ``shardctl status -o json`` and ``shardctl metrics --once``.

Prints medians, ratios to the baseline and to ``status -o json``; removes the cluster.
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable

from _cluster import baseline, cli, temp_cluster
from prometheus_client import CollectorRegistry, generate_latest

from shardctl.db import pg
from shardctl.health.metrics import Collector
from shardctl.health.scrape import Scraper
from shardctl.health.status import status_rows


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()

    with temp_cluster(shards=args.shards, replicas=1) as cluster:
        for primary in cluster.topology.primaries():
            with pg.connect(primary, cluster.credentials(), "app") as conn:
                conn.execute(
                    "INSERT INTO users (id, first_name) SELECT gen_random_uuid(), 'u' || i "
                    "FROM generate_series(1, 1000) i"
                )
        path = str(cluster.topology.path)
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "shardctl", "metrics", "-f", path, "--listen",
             f"127.0.0.1:{port}", "--rows-interval", "0"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            url = f"http://127.0.0.1:{port}/metrics"
            for _ in range(100):
                try:
                    urllib.request.urlopen(url, timeout=30).read()
                    break
                except OSError:
                    time.sleep(0.2)

            def status_facts() -> None:
                status_rows(cluster.observe())
                cluster.in_flight()

            scraper = Scraper(cluster.topology, cluster.engines, cluster.credentials)
            registry = CollectorRegistry(auto_describe=False)
            registry.register(Collector(scraper))

            def scrape() -> None:
                generate_latest(registry)

            def http() -> None:
                with urllib.request.urlopen(url, timeout=30) as response:
                    if b"shardctl_up" not in response.read():
                        raise RuntimeError("no shardctl_up in the scrape")

            cases: dict[str, Callable[[], None]] = {
                "baseline (SELECT 1 per node)": baseline(cluster),
                "status facts, in process": status_facts,
                "metrics scrape, in process": scrape,
                "metrics scrape over HTTP": http,
                "cli: status -o json": cli("status", "-o", "json", "-f", path),
                "cli: metrics --once": cli("metrics", "--once", "-f", path),
            }
            times: dict[str, list[float]] = {name: [] for name in cases}
            for case in cases.values():  # warm-up
                case()
            for _ in range(args.rounds):
                for name, case in cases.items():
                    t = time.perf_counter()
                    case()
                    times[name].append(time.perf_counter() - t)
        finally:
            server.terminate()
            server.wait(timeout=10)

    base = statistics.median(times["baseline (SELECT 1 per node)"])
    status = statistics.median(times["cli: status -o json"])
    print(
        f"{args.shards} shards x 1 replica, {args.rounds} rounds, median; "
        f"{platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} cpus, "
        f"load average {os.getloadavg()[0]:.0f}"
    )
    for name, samples in times.items():
        median = statistics.median(samples)
        print(
            f"  {name:<30} {median * 1000:8.0f} ms  {median / base:6.1f}x baseline"
            f"  {median / status:5.2f}x status -o json"
        )


if __name__ == "__main__":
    main()
