"""The client's CPU per insert of ``run_load`` in one process, for this checkout or another.

    python benchmarks/load_cpu.py --topology FILE [--checkout DIR] [--engine loop|threads]
                                  [--loops N] [--workers 16] [--seconds 5] [--cold]

Imports shardctl from ``--checkout`` (default: this one), so that main's checkout and a
branch's can be measured one after the other with the same script; runs ``run_load``
insert-only for 2 s (to open the connections), then for ``--seconds``, and prints inserts/s
and ``time.process_time()`` per insert of that second run (every thread of the process,
libpq included; no start-up). ``--cold``: no first run, so the measured one opens its
connections, as a ``shardctl load`` process does. ``--engine`` and ``--loops`` are passed only
when given (a checkout without them takes none).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Any


def main() -> None:
    """Parse options, run once to warm up, once measured."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--topology", type=Path, required=True)
    parser.add_argument("--checkout", type=Path, default=Path(__file__).resolve().parent.parent)
    parser.add_argument("--engine", default=None)
    parser.add_argument("--loops", type=int, default=None)
    parser.add_argument("--cold", action="store_true")
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    sys.path.insert(0, str(args.checkout.resolve()))
    from shardctl import Router
    from shardctl.ops.cluster import Cluster
    from shardctl.workload.load import run_load
    from shardctl.workload.users import LoadConfig, Mix

    extra: dict[str, Any] = {} if args.engine is None else {"engine": args.engine}
    extra |= {} if args.loops is None else {"loops": args.loops}
    inserts = Mix(insert=100, read=0, update=0, delete=0)
    with (
        Cluster.load(args.topology) as cluster,
        Router(cluster, max_size=args.workers) as router,
    ):
        config = LoadConfig(workers=args.workers, duration=2.0, mix=inserts, **extra)
        if not args.cold:
            run_load(router, config)
        config = dataclasses.replace(config, duration=args.seconds)
        load = " ".join(f"{x:.1f}" for x in os.getloadavg())
        used = time.process_time()
        done = run_load(router, config).ok
        used = time.process_time() - used
    print(
        f"{Path(run_load.__code__.co_filename).parents[2]} {args.engine or ''}"
        f"{'' if args.loops is None else f' x{args.loops}'}{' cold' if args.cold else ''}: "
        f"{done / args.seconds:,.0f} "
        f"inserts/s, {used / max(done, 1) * 1e6:.0f} us CPU per insert (load average {load})",
        flush=True,
    )


if __name__ == "__main__":
    main()
