"""`shardctl validate` on the costly topologies: wall time and peak memory of the real CLI.

Each file runs under /usr/bin/time -v (best of --rounds), next to the minimal topology as the
baseline in the same run, so the ratio holds on a busy machine. Prints one row per file.

    python benchmarks/topology_validate.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.unit.config.test_topology_corpus import GENERATED_BAD, GENERATED_GOOD  # noqa: E402

KEPT = ["good/minimal.yaml", "bad/billion-laughs.yaml", "bad/merge-laughs.yaml"]


def measure(path: Path) -> tuple[float, int, int]:
    """(seconds, peak KB, exit code) of one `shardctl validate -f path -o json`."""
    command = [sys.executable, "-m", "shardctl", "validate", "-f", str(path), "-o", "json"]
    result = subprocess.run(
        ["/usr/bin/time", "-v", *command],
        capture_output=True,
        text=True,
        check=False,
    )
    wall = re.search(r"Elapsed \(wall clock\) time.*: (?:(\d+):)?(\d+(?:\.\d+)?)", result.stderr)
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr)
    code = re.search(r"Exit status: (\d+)", result.stderr)
    assert wall and peak and code, result.stderr[-2000:]
    seconds = int(wall[1] or 0) * 60 + float(wall[2])
    return seconds, int(peak[1]), int(code[1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    rounds = parser.parse_args().rounds
    folder = Path(tempfile.mkdtemp(prefix="shardctl-validate-"))
    files = {name: REPO / "tests" / "topologies" / name for name in KEPT}
    for name, (make, _) in GENERATED_BAD.items():
        files[name] = folder / f"{name}.yaml"
        files[name].write_bytes(make())
    for name, make_good in GENERATED_GOOD.items():
        files[name] = folder / f"{name}.yaml"
        files[name].write_bytes(make_good())
    results: dict[str, tuple[float, int, int]] = {}
    for _ in range(rounds):  # interleaved, so that load on the machine hits every file alike
        for name, path in files.items():
            got = measure(path)
            best = results.get(name)
            results[name] = got if best is None or got[0] < best[0] else best
    base = results["good/minimal.yaml"][0]
    print(f"{'file':<48} {'exit':>4} {'wall s':>7} {'vs minimal':>10} {'peak MB':>8}")
    for name, (seconds, peak, code) in results.items():
        size = files[name].stat().st_size
        label = f"{name} ({size / 1e6:.2f} MB)" if size > 100_000 else name
        print(f"{label:<48} {code:>4} {seconds:>7.2f} {seconds / base:>9.2f}x {peak / 1024:>8.1f}")


if __name__ == "__main__":
    main()
