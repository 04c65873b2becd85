"""How fast `shardctl` starts: each command's wall time as a ratio of a baseline in the same run.

Baselines, each a fresh interpreter from the same venv:
- `python -c "import typer"` for `--version`, `--help` and `validate` of the example
  (goals: at most 2x, 2x and 3x);
- with `--status`: a 4 x 1 cluster is brought up, and `status` is compared with a fresh
  interpreter that connects to every node with psycopg and runs `SELECT 1` (goal: at most 1.5x).

Every case runs in two modes: bytecode cached (a warmed `PYTHONPYCACHEPREFIX` of its own) and
not (`PYTHONDONTWRITEBYTECODE=1` as on the development machines: shardctl, installed editable,
is compiled from source at every start; the dependencies keep the bytecode pip wrote).
Runs are interleaved so that load on the machine hits every case alike; the median is shown.

    python benchmarks/cli_startup.py [--rounds 15] [--status]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARDCTL = [sys.executable, "-m", "shardctl"]

CONNECT_ALL = """
import json, os, psycopg
for conninfo in json.loads(os.environ["BENCH_CONNINFOS"]):
    with psycopg.connect(conninfo, connect_timeout=10) as conn:
        conn.execute("SELECT 1").fetchone()
"""


def _run(command: list[str], env: dict[str, str], ok: tuple[int, ...] = (0,)) -> float:
    start = time.perf_counter()
    result = subprocess.run(command, env=env, cwd=REPO, capture_output=True, check=False)
    seconds = time.perf_counter() - start
    if result.returncode not in ok:
        said = result.stderr[-800:]
        raise SystemExit(f"{' '.join(command)} exited {result.returncode}: {said!r}")
    return seconds


def _environments(cache: Path) -> dict[str, dict[str, str]]:
    base = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE",)}
    base.pop("PYTHONPYCACHEPREFIX", None)
    return {
        "cached": {**base, "PYTHONPYCACHEPREFIX": str(cache)},
        "no bytecode cache": {**base, "PYTHONDONTWRITEBYTECODE": "1"},
    }


def measure(cases: dict[str, list[str]], rounds: int, env: dict[str, str]) -> dict[str, float]:
    """Median wall seconds of each case, interleaved over ``rounds`` (one warm-up round)."""
    times: dict[str, list[float]] = {name: [] for name in cases}
    for round_ in range(rounds + 1):
        for name, command in cases.items():
            seconds = _run(command, env, ok=(0, 1))
            if round_:  # the first round warms the page cache and the bytecode cache
                times[name].append(seconds)
    return {name: statistics.median(values) for name, values in times.items()}


def _print(title: str, medians: dict[str, float], baselines: dict[str, str]) -> None:
    print(f"\n{title}")
    print(f"{'case':<44} {'median s':>9} {'ratio':>7}  baseline")
    for name, seconds in medians.items():
        base = baselines.get(name)
        ratio = f"{seconds / medians[base]:>6.2f}x" if base else f"{'':>7}"
        print(f"{name:<44} {seconds:>9.3f} {ratio}  {base or ''}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--status", action="store_true", help="also time status (4 x 1 cluster)")
    args = parser.parse_args()
    example = str(REPO / "topology.yaml")
    cases = {
        "python -c pass": [sys.executable, "-c", "pass"],
        'python -c "import typer"': [sys.executable, "-c", "import typer"],
        "shardctl --version": [*SHARDCTL, "--version"],
        "shardctl --help": [*SHARDCTL, "--help"],
        "shardctl validate (the example)": [*SHARDCTL, "validate", "-f", example],
    }
    baselines = {
        "shardctl --version": 'python -c "import typer"',
        "shardctl --help": 'python -c "import typer"',
        "shardctl validate (the example)": 'python -c "import typer"',
    }
    with tempfile.TemporaryDirectory(prefix="shardctl-pycache-") as cache:
        environments = _environments(Path(cache))
        for mode, env in environments.items():
            medians = measure(cases, args.rounds, env)
            _print(f"# {mode}, median of {args.rounds}", medians, baselines)
        if args.status:
            _status(args.rounds, environments)


def _status(rounds: int, environments: dict[str, dict[str, str]]) -> None:
    sys.path.insert(0, str(REPO))  # shardctl and tests, for _cluster
    from _cluster import temp_cluster

    from shardctl.db import pg

    with temp_cluster(shards=4, replicas=1) as cluster:
        topology, logins = cluster.topology, cluster.credentials()
        conninfos = [pg.conninfo(n, logins, topology.spec.database) for n in topology.nodes]
        cases = {
            "psycopg: connect to every node, SELECT 1": [sys.executable, "-c", CONNECT_ALL],
            "shardctl status (4 x 1)": [*SHARDCTL, "status", "-f", str(cluster.topology.path)],
        }
        baselines = {"shardctl status (4 x 1)": "psycopg: connect to every node, SELECT 1"}
        for mode, env in environments.items():
            env = {**env, "BENCH_CONNINFOS": json.dumps(conninfos)}
            _print(f"# {mode}, median of {rounds}", measure(cases, rounds, env), baselines)


if __name__ == "__main__":
    main()
