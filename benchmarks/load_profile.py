"""Where ``shardctl load``'s client CPU goes: cProfile in every load thread, per ``--pipeline``.

    python benchmarks/load_profile.py --topology FILE [--workers 16] [--seconds 10]
                                      [--pipelines 1,8] [--top 15]

Runs :func:`shardctl.workload.load.run_load` insert-only in this process, once per
``--pipeline`` value, against a running cluster, with a ``cProfile.Profile`` in each of the
run's threads (cProfile sees only the thread it was enabled in), and prints inserts/s, the
process's CPU seconds per 1,000 inserts (``time.process_time()``: all threads, psycopg's C code
included) and the functions with the most own time over all load threads.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import _cluster  # noqa: F401  (puts the repository on sys.path)

from shardctl import Router
from shardctl.ops.cluster import Cluster
from shardctl.util import fanout
from shardctl.workload.load import run_load
from shardctl.workload.users import LoadConfig, Mix

INSERTS = Mix(insert=100, read=0, update=0, delete=0)


def profiled(top: int, run: Callable[[], int]) -> tuple[int, float, str]:
    """``run()`` with every load thread profiled: its result, CPU seconds, the top functions."""
    profiles: list[cProfile.Profile] = []
    lock = threading.Lock()
    original = fanout.Background._run

    def patched(self: Any, key: Any, task: Callable[[], Any]) -> None:
        profile = cProfile.Profile()
        with lock:
            profiles.append(profile)

        def inside() -> Any:
            profile.enable()
            try:
                return task()
            finally:
                profile.disable()

        original(self, key, inside)

    fanout.Background._run = patched  # type: ignore[method-assign]
    try:
        used = time.process_time()
        done = run()
        used = time.process_time() - used
    finally:
        fanout.Background._run = original  # type: ignore[method-assign]
    out = io.StringIO()
    stats = pstats.Stats(*profiles, stream=out) if profiles else None
    if stats is not None:
        stats.strip_dirs().sort_stats("tottime").print_stats(top)
    return done, used, out.getvalue()


def inserted(router: Router, config: LoadConfig) -> int:
    """Inserts one run of ``config`` acknowledged."""
    return run_load(router, config).ok


def main() -> None:
    """Parse options, profile one run per --pipeline value."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--topology", type=Path, required=True)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--pipelines", default="1,8")
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    with Cluster.load(args.topology) as cluster, Router(cluster, max_size=args.workers) as router:
        router.execute("00000000-0000-0000-0000-000000000000", "SELECT 1")  # ring, pools
        for pipe in (int(p) for p in args.pipelines.split(",")):
            config = LoadConfig(
                workers=args.workers, duration=args.seconds, mix=INSERTS, pipeline=pipe
            )
            load = " ".join(f"{x:.1f}" for x in os.getloadavg())
            done, used, top = profiled(args.top, partial(inserted, router, config))
            print(
                f"# --pipeline {pipe}: {done / args.seconds:,.0f} inserts/s, "
                f"{used / max(done, 1) * 1000:.3f} CPU s per 1,000 inserts "
                f"(load average {load}; profiling slows the client)"
            )
            print(top)


if __name__ == "__main__":
    main()
