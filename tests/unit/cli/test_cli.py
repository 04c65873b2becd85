"""The CLI in-process, through typer's CliRunner: argument handling and error mapping.

Nothing here needs a cluster or an engine, so it runs in milliseconds; the subprocess tests in
``tests/integration`` still run the real console script against real clusters.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
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


def shardctl(*args: str | Path, env: Mapping[str, str | None] | None = None) -> Ran:
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


# ---------------------------------------------------------------- the operator's view (issue 10)


def never_up(tmp_path: Path) -> Path:
    """A valid topology of a cluster that was never brought up here (no secrets file)."""
    path = tmp_path / "topology.yaml"
    path.write_text(
        "cluster: nowhere\nimage: postgres:17\ndatabase: app\nbase_port: 47900\n"
        "credentials: {secrets_file: secrets.json}\n"
        "shards:\n  - name: shard-0\n    replicas: 1\n",
        encoding="utf-8",
    )
    return path


NEEDS_A_RUNNING_CLUSTER = (
    ["ring"],
    ["distribution"],
    ["rebalance", "--yes"],
    ["rebalance", "--plan"],
    ["rebalance", "--abort"],
    ["add-shard", "shard-9"],
    ["load", "--ops", "5"],
    ["load", "--verify", "ledger.jsonl"],
    ["switchover", "shard-0", "--yes"],
    ["failover", "shard-0", "--yes"],
    ["monitor", "--once"],
    ["monitor"],
)


def test_every_command_on_a_cluster_never_brought_up_exits_3_naming_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = never_up(tmp_path)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ledger.jsonl").touch()  # a missing ledger is bad usage, checked first
    for args in NEEDS_A_RUNNING_CLUSTER:
        ran = shardctl(*args, "-f", path)
        assert ran.code == 3, (args, ran.stderr)
        assert ran.stderr.splitlines()[0] == (
            "error: the cluster `nowhere` is not running: run `shardctl up`"
        ), args
        assert "Traceback" not in ran.stderr


def test_every_command_with_a_missing_engine_is_one_short_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = never_up(tmp_path)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ledger.jsonl").touch()
    engine = {"DOCKER_HOST": "unix:///nonexistent/docker.sock"}
    commands = [["status"], ["verify-replication"], ["up"], ["down"], *NEEDS_A_RUNNING_CLUSTER]
    for args in commands:
        ran = shardctl(*args, "-f", path, env=engine)
        assert ran.code == 3, (args, ran.stderr)
        lines = ran.stderr.strip().splitlines()
        assert len(lines) == 1 and len(lines[0]) <= 200, (args, lines)
        assert "Docker engine does not answer" in lines[0] or "is not running" in lines[0]
        assert "FileNotFoundError" not in ran.stderr and "Traceback" not in ran.stderr
    verbose = shardctl("--verbose", "status", "-f", path, env=engine)
    assert verbose.code == 3 and "cause:" in verbose.stderr  # the raw error, when asked


def test_topology_before_the_command_and_the_one_after_wins(tmp_path: Path) -> None:
    before = shardctl("-f", EXAMPLE, "validate", "-o", "json")
    assert before.code == 0, before.stderr
    assert '"cluster": "demo"' in before.stdout
    after = shardctl("-f", tmp_path / "missing.yaml", "validate", "-f", EXAMPLE)
    assert after.code == 0, after.stderr
    wrong = shardctl("-f", EXAMPLE, "validate", "-f", tmp_path / "missing.yaml")
    assert wrong.code == 2 and "missing.yaml" in wrong.stderr


def test_shell_completion_is_offered() -> None:
    ran = shardctl("--help")
    assert "--install-completion" in ran.stdout and "--show-completion" in ran.stdout


def test_shard_names_complete_from_the_topology(tmp_path: Path) -> None:
    from typer.main import get_command

    from shardctl.cli import app

    command = get_command(app)
    env = {
        "_SHARDCTL_COMPLETE": "complete_bash",
        "COMP_WORDS": f"shardctl -f {EXAMPLE} switchover shard-",
        "COMP_CWORD": "4",
    }
    with CliRunner().isolation(env=env) as (out, _, _):
        with contextlib.suppress(SystemExit):
            command.main(args=[], prog_name="shardctl", complete_var="_SHARDCTL_COMPLETE")
        sys.stdout.flush()
        offered = out.getvalue().decode().split()
    assert offered == ["shard-0", "shard-1", "shard-2", "shard-3"]


NUMERIC = (
    (["status", "--watch"], "--watch", "0.5 to 3600"),
    (["up", "--timeout"], "--timeout", "1 to 86400"),
    (["verify-replication", "--canary-timeout"], "--canary-timeout", "0.1 to 3600"),
    (["verify-replication", "--timeout"], "--timeout", "0.1 to 3600"),
    (["verify-replication", "--max-lag-seconds"], "--max-lag-seconds", "0 to 86400"),
    (["add-shard", "shard-9", "--replicas"], "--replicas", "0 to 9"),
    (["add-shard", "shard-9", "--timeout"], "--timeout", "1 to 86400"),
    (["rebalance", "--throttle"], "--throttle", "0 to 60"),
    (["rebalance", "--rows-per-chunk"], "--rows-per-chunk", "100 to 10000000"),
    (["load", "--workers"], "--workers", "1 to 256"),
    (["load", "--duration"], "--duration", "0.1 to 86400"),
    (["load", "--ops"], "--ops", "1 to 1000000000"),
    (["switchover", "shard-0", "--timeout"], "--timeout", "1 to 3600"),
    (["monitor", "--interval"], "--interval", "0.1 to 60"),
)


def test_every_numeric_option_refuses_inf_nan_and_absurd_values_naming_its_bounds() -> None:
    for args, option, bounds in NUMERIC:
        is_int = option in ("--replicas", "--rows-per-chunk", "--workers", "--ops")
        for value in ("inf", "nan", "1e300", "-1") if not is_int else ("10000000000", "-1"):
            ran = shardctl(*args, value, "-f", EXAMPLE)
            assert ran.code == 2, (args, value, ran.stderr)
            assert option in ran.stderr and bounds in ran.stderr, (args, value, ran.stderr)
            assert "Traceback" not in ran.stderr and ran.stdout == ""
        helped = shardctl(*args[:-1], "--help")
        assert f"[{bounds}]" in " ".join(helped.stdout.split()), (args, helped.stdout)
    for size in ("inf", "nan", "1e300", "9" * 400, "2TiB"):
        ran = shardctl("verify-replication", "--max-lag-bytes", size, "-f", EXAMPLE)
        assert ran.code == 2 and "--max-lag-bytes" in ran.stderr, (size, ran.stderr)


def test_a_bad_shard_name_on_the_command_line_is_reported_as_the_argument() -> None:
    for name, says in (("Bad_Name", "'Bad_Name' is not a valid shard name"), ("", "is empty")):
        ran = shardctl("add-shard", name, "-f", EXAMPLE)
        assert ran.code == 2, ran.stderr
        assert says in ran.stderr and "NAME" in ran.stderr
        assert "topology.yaml:" not in ran.stderr and "valid string" not in ran.stderr


def test_contradictory_options_exit_2() -> None:
    for args in (
        ["load", "--duration", "1", "--ops", "10"],
        ["load", "--mix", "insert=30,insert=40"],
        ["rebalance", "--plan", "--yes"],
        ["rebalance", "--plan", "--abort"],
        ["status", "-o", "yaml"],
    ):
        ran = shardctl(*args, "-f", EXAMPLE)
        assert ran.code == 2, (args, ran.stderr)
        assert "Traceback" not in ran.stderr


def test_status_watch_takes_an_optional_value() -> None:
    from shardctl.cli.app import optional_values

    assert optional_values(["status", "--watch"]) == ["status", "--watch", "2"]
    assert optional_values(["status", "--watch", "-o", "json"]) == [
        "status",
        "--watch",
        "2",
        "-o",
        "json",
    ]
    assert optional_values(["status", "--watch", "5"]) == ["status", "--watch", "5"]
    assert optional_values(["status", "--watch", "-5"]) == ["status", "--watch", "-5"]
    assert optional_values(["load", "--watch"]) == ["load", "--watch"]
