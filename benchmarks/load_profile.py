"""Where ``shardctl load``'s client CPU goes: cProfile in every load thread, per ``--pipeline``.

    python benchmarks/load_profile.py --topology FILE [--workers 16] [--seconds 10]
                                      [--pipelines 1,8] [--engines loop,threads]
                                      [--loops 1,4] [--repeat 1] [--top 15] [--no-profile]

Runs :func:`shardctl.workload.load.run_load` insert-only in this process, once per
``--pipeline`` value, against a running cluster, with a ``cProfile.Profile`` in each of the
run's threads (cProfile sees only the thread it was enabled in), and prints inserts/s, the
process's CPU seconds per 1,000 inserts (``time.process_time()``: all threads, psycopg's C code
included), its context switches per insert, and the functions with the most own time over all
load threads (the loop engine's helper threads are not profiled; ``--no-profile``: none, for
the CPU figures alone, rounds interleaved with ``--repeat``).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import resource
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
from shardctl.workload.users import ENGINES, Engine, LoadConfig, Mix

INSERTS = Mix(insert=100, read=0, update=0, delete=0)


def profiled(top: int, run: Callable[[], int], *, cpu: bool = False) -> tuple[int, float, str]:
    """``run()`` with every load thread profiled (``cpu``: by the thread's CPU time, not the
    wall clock): its result, CPU seconds, the top functions."""
    profiles: list[cProfile.Profile] = []
    lock = threading.Lock()
    original = fanout.Background._run

    def patched(self: Any, key: Any, task: Callable[[], Any]) -> None:
        profile = cProfile.Profile(time.thread_time) if cpu else cProfile.Profile()
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
    """Parse options, profile one run per --pipeline value (and per engine with --pipeline 1)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--topology", type=Path, required=True)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--pipelines", default="1,8")
    parser.add_argument("--engines", default="loop")
    parser.add_argument("--loops", default="0")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument(
        "--cpu", action="store_true", help="profile by thread CPU time (not wall time)"
    )
    args = parser.parse_args()
    engines: list[Engine] = [e for e in ENGINES if e in args.engines.split(",")]
    counts = [int(n) for n in args.loops.split(",")]
    runs: list[tuple[int, Engine, int]] = []
    for p in args.pipelines.split(","):
        if p != "1":
            runs.append((int(p), "loop", 0))
            continue
        runs += [(1, e, n) for e in engines for n in (counts if e == "loop" else [0])]
    with Cluster.load(args.topology) as cluster, Router(cluster, max_size=args.workers) as router:
        router.execute("00000000-0000-0000-0000-000000000000", "SELECT 1")  # ring, pools
        for _ in range(args.repeat):
            for pipe, engine, count in runs:
                config = LoadConfig(
                    workers=args.workers, duration=args.seconds, mix=INSERTS, pipeline=pipe,
                    engine=engine, loops=count or None,
                )  # fmt: skip
                load = " ".join(f"{x:.1f}" for x in os.getloadavg())
                switches = _switches()
                if args.no_profile:
                    used = time.process_time()
                    done = inserted(router, config)
                    used, top = time.process_time() - used, ""
                else:
                    done, used, top = profiled(
                        args.top, partial(inserted, router, config), cpu=args.cpu
                    )
                voluntary, forced = (b - a for a, b in zip(switches, _switches(), strict=True))
                name = f"--pipeline {pipe}" + (f" --engine {engine}" if pipe == 1 else "")
                name += f" --loops {count}" if count else ""
                print(
                    f"# {name}: {done / args.seconds:,.0f} inserts/s, "
                    f"{used / max(done, 1) * 1000:.3f} CPU s per 1,000 inserts, "
                    f"{voluntary / max(done, 1):.1f} + {forced / max(done, 1):.1f} context "
                    f"switches per insert (voluntary + forced; load average {load}"
                    + ("" if args.no_profile else "; profiling slows the client")
                    + ")",
                    flush=True,
                )
                if top:
                    print(top)


def _switches() -> tuple[int, int]:
    """This process's context switches so far (all threads): voluntary, forced."""
    used = resource.getrusage(resource.RUSAGE_SELF)
    return used.ru_nvcsw, used.ru_nivcsw


if __name__ == "__main__":
    main()
