"""The CLI in-process, through typer's CliRunner: argument handling and error mapping.

Nothing here needs a cluster or an engine, so it runs in milliseconds; the subprocess tests in
``tests/integration`` still run the real console script against real clusters.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from typer.testing import CliRunner

from shardctl import __version__
from shardctl.cli import main
from tests.conftest import REPO

EXAMPLE = REPO / "topology.yaml"


@dataclass(frozen=True)
class Ran:
    """What one in-process run of ``shardctl`` did."""

    code: int
    stdout: str
    stderr: str


def shardctl(*args: str | Path, env: dict[str, str | None] | None = None) -> Ran:
    """Run the console script's entry point (error mapping included) in CliRunner's isolation:
    captured stdout and stderr, stdin that is no tty, ``env`` set for the run only."""
    with CliRunner().isolation(env=env) as (out, err, _):
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        sys.stdout.flush()
        sys.stderr.flush()
        return Ran(code, out.getvalue().decode(), err.getvalue().decode())


def test_version() -> None:
    ran = shardctl("--version")
    assert ran.code == 0
    assert ran.stdout.strip() == f"shardctl {__version__}"


def test_bad_options_exit_2_with_usage() -> None:
    for args in (["status", "--bogus"], ["nonsense"], ["status", "-o", "yaml"]):
        ran = shardctl(*args)
        assert ran.code == 2, args
        assert "Usage: shardctl" in ran.stderr, args
        assert "Traceback" not in ran.stderr
        assert ran.stdout == ""


def test_validate_accepts_the_example() -> None:
    ran = shardctl("validate", "-f", EXAMPLE)
    assert ran.code == 0, ran.stderr
    assert "valid" in ran.stdout and "shard-3" in ran.stdout
    as_json = shardctl("validate", "-f", EXAMPLE, "-o", "json")
    assert as_json.code == 0 and '"cluster": "demo"' in as_json.stdout


def test_a_broken_topology_is_one_line_naming_file_and_line(tmp_path: Path) -> None:
    broken = tmp_path / "topology.yaml"
    lines = EXAMPLE.read_text(encoding="utf-8").splitlines()
    number = next(i for i, line in enumerate(lines, 1) if "replicas:" in line)
    lines[number - 1] = lines[number - 1].replace("replicas: 1", "replicas: two")
    broken.write_text("\n".join(lines) + "\n", encoding="utf-8")
    ran = shardctl("validate", "-f", broken)
    assert ran.code == 2
    assert len(ran.stderr.strip().splitlines()) == 1
    assert ran.stderr.startswith(f"error: {broken}:{number}: ")


def test_a_missing_topology_file_exits_2(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.yaml"
    for command in ("validate", "status", "up"):
        ran = shardctl(command, "-f", missing)
        assert ran.code == 2, command
        assert len(ran.stderr.strip().splitlines()) == 1
        assert str(missing) in ran.stderr and "Traceback" not in ran.stderr


def test_down_volumes_without_yes_and_no_tty_exits_2() -> None:
    ran = shardctl("down", "-f", EXAMPLE, "--volumes")
    assert ran.code == 2
    assert len(ran.stderr.strip().splitlines()) == 1
    assert "--yes" in ran.stderr


def test_an_unreachable_engine_exits_3_in_one_line() -> None:
    ran = shardctl("status", "-f", EXAMPLE, env={"DOCKER_HOST": "unix:///nonexistent.sock"})
    assert ran.code == 3
    assert len(ran.stderr.strip().splitlines()) == 1
    assert ran.stderr.startswith("error: ") and "Docker engine" in ran.stderr
