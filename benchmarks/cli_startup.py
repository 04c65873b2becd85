"""How fast `shardctl` starts: each command's wall time as a ratio of a baseline in the same run.

Baselines, each a fresh interpreter from the same venv:
- `python -c "import typer"` for `--version`, `--help` and `validate` of the example
  (goals: at most 2x, 2x and 3x);
- with `--status` (or `--status-topology FILE`, a cluster already running): a 4 x 1 cluster is
  brought up, and `status` is compared with a fresh interpreter that connects to every node
  with psycopg and runs `SELECT 1` (goal: at most 1.5x).

Every case runs in two modes: bytecode cached (a warmed `PYTHONPYCACHEPREFIX` of its own), and
not: `PYTHONDONTWRITEBYTECODE=1` with shardctl imported from a copy of its source that has no
`__pycache__` (so it is compiled at every start, whatever the work tree holds; the dependencies
keep the bytecode pip wrote). With `--compare DIR` (another checkout, e.g. from `git archive`)
its shardctl is timed in the same rounds, as "(DIR's name)". Runs are interleaved so that load
on the machine hits every case alike; the median is shown, of the wall time and of the CPU time
the command's process used (user + system, from `wait4`): on a loaded machine the wall time
swings with the load, the CPU time much less (for `status` it leaves out the servers' part).

    python benchmarks/cli_startup.py [--rounds 15] [--status | --status-topology FILE]
                                     [--compare DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARDCTL = [sys.executable, "-m", "shardctl"]
NEUTRAL = Path(tempfile.gettempdir())

CONNECT_ALL = """
import json, os, psycopg
for conninfo in json.loads(os.environ["BENCH_CONNINFOS"]):
    with psycopg.connect(conninfo, connect_timeout=10) as conn:
        conn.execute("SELECT 1").fetchone()
"""


Case = tuple[list[str], dict[str, str]]
"""A command line and what its environment adds."""


def _run(
    command: list[str], env: dict[str, str], ok: tuple[int, ...] = (0,)
) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + system) of one run of ``command``."""
    start = time.perf_counter()
    # not from the repository: `python -m` puts the working directory first on sys.path
    child = subprocess.Popen(
        command, env=env, cwd=NEUTRAL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    assert child.stderr is not None
    said = child.stderr.read()
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    child.stderr.close()
    if child.returncode not in ok:
        raise SystemExit(f"{' '.join(command)} exited {child.returncode}: {said[-800:]!r}")
    return seconds, usage.ru_utime + usage.ru_stime


def _environments(cache: Path) -> dict[str, dict[str, str]]:
    base = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE",)}
    base.pop("PYTHONPYCACHEPREFIX", None)
    base.pop("PYTHONPATH", None)
    return {
        "cached": {**base, "PYTHONPYCACHEPREFIX": str(cache)},
        "no bytecode cache": {**base, "PYTHONDONTWRITEBYTECODE": "1"},
    }


def _sources(trees: dict[str, Path], scratch: Path) -> dict[str, dict[str, Path]]:
    """Per mode, per label: the folder to put first on ``PYTHONPATH`` for that tree. Without
    a cache, a copy of its ``shardctl`` package with no ``__pycache__``."""
    fresh: dict[str, Path] = {}
    for label, tree in trees.items():
        copy = scratch / f"source-{len(fresh)}"
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        shutil.copytree(tree / "shardctl", copy / "shardctl", ignore=ignore)
        fresh[label] = copy
    return {"cached": dict(trees), "no bytecode cache": fresh}


def measure(
    cases: dict[str, Case], rounds: int, env: dict[str, str]
) -> tuple[dict[str, float], dict[str, float]]:
    """Median wall seconds and median CPU seconds of each case, interleaved over ``rounds``
    (one warm-up round)."""
    walls: dict[str, list[float]] = {name: [] for name in cases}
    cpus: dict[str, list[float]] = {name: [] for name in cases}
    for round_ in range(rounds + 1):
        for name, (command, extra) in cases.items():
            wall, cpu = _run(command, {**env, **extra}, ok=(0, 1))
            if round_:  # the first round warms the page cache and the bytecode cache
                walls[name].append(wall)
                cpus[name].append(cpu)
    return _medians(walls), _medians(cpus)


def _medians(times: dict[str, list[float]]) -> dict[str, float]:
    return {name: statistics.median(values) for name, values in times.items()}


def _print(
    title: str, measured: tuple[dict[str, float], dict[str, float]], baselines: dict[str, str]
) -> None:
    walls, cpus = measured
    print(f"\n{title}")
    print(f"{'case':<52} {'wall s':>7} {'ratio':>7} {'CPU s':>7} {'ratio':>7}  baseline")
    for name, seconds in walls.items():
        base = baselines.get(name)
        wall = f"{seconds / walls[base]:>6.2f}x" if base else f"{'':>7}"
        cpu = f"{cpus[name] / cpus[base]:>6.2f}x" if base else f"{'':>7}"
        print(f"{name:<52} {seconds:>7.3f} {wall} {cpus[name]:>7.3f} {cpu}  {base or ''}")


def _shardctl_cases(
    label: str, source: Path, example: str
) -> tuple[dict[str, Case], dict[str, str]]:
    extra = {"PYTHONPATH": str(source)}
    cases = {
        f"shardctl --version{label}": ([*SHARDCTL, "--version"], extra),
        f"shardctl --help{label}": ([*SHARDCTL, "--help"], extra),
        f"shardctl validate (the example){label}": (
            [*SHARDCTL, "validate", "-f", example],
            extra,
        ),
    }
    return cases, dict.fromkeys(cases, 'python -c "import typer"')


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--status", action="store_true", help="also time status (4 x 1 cluster)")
    parser.add_argument(
        "--status-topology", type=Path, help="time status of this running cluster instead"
    )
    parser.add_argument("--compare", type=Path, help="another checkout to time alongside")
    args = parser.parse_args()
    example = str(REPO / "topology.yaml")
    trees = {"": REPO}
    if args.compare is not None:
        trees[f" ({args.compare.resolve().name})"] = args.compare.resolve()
    with tempfile.TemporaryDirectory(prefix="shardctl-startup-") as scratch:
        environments = _environments(Path(scratch) / "pycache")
        sources = _sources(trees, Path(scratch))
        for mode, env in environments.items():
            cases: dict[str, Case] = {
                "python -c pass": ([sys.executable, "-c", "pass"], {}),
                'python -c "import typer"': ([sys.executable, "-c", "import typer"], {}),
            }
            baselines: dict[str, str] = {}
            for label, source in sources[mode].items():
                more, bases = _shardctl_cases(label, source, example)
                cases.update(more)
                baselines.update(bases)
            _print(
                f"# {mode}, median of {args.rounds}", measure(cases, args.rounds, env), baselines
            )
        if args.status_topology is not None:
            _status_of(args.status_topology, args.rounds, environments, sources)
        elif args.status:
            _status(args.rounds, environments, sources)


def _status(
    rounds: int, environments: dict[str, dict[str, str]], sources: dict[str, dict[str, Path]]
) -> None:
    sys.path.insert(0, str(REPO))  # shardctl and tests, for _cluster
    from _cluster import temp_cluster

    with temp_cluster(shards=4, replicas=1) as cluster:
        _status_of(cluster.topology.path, rounds, environments, sources)


def _status_of(
    path: Path,
    rounds: int,
    environments: dict[str, dict[str, str]],
    sources: dict[str, dict[str, Path]],
) -> None:
    """``status`` of the running cluster at ``path`` against connecting to each of its nodes."""
    sys.path.insert(0, str(REPO))
    from shardctl.config import credentials
    from shardctl.config.topology import load
    from shardctl.db import pg

    topology = load(path)
    logins = credentials.load(topology)
    conninfos = [pg.conninfo(n, logins, topology.spec.database) for n in topology.nodes]
    shape = f"{len(topology.spec.shards)} x {len(topology.nodes) // len(topology.spec.shards) - 1}"
    base = "psycopg: connect to every node, SELECT 1"
    for mode, env in environments.items():
        cases: dict[str, Case] = {base: ([sys.executable, "-c", CONNECT_ALL], {})}
        for label, source in sources[mode].items():
            command = [*SHARDCTL, "status", "-f", str(path)]
            cases[f"shardctl status ({shape}){label}"] = (command, {"PYTHONPATH": str(source)})
        baselines = dict.fromkeys(list(cases)[1:], base)
        env = {**env, "BENCH_CONNINFOS": json.dumps(conninfos)}
        _print(f"# {mode}, median of {rounds}", measure(cases, rounds, env), baselines)


if __name__ == "__main__":
    main()
