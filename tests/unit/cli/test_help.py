"""Help a newcomer can read, completion per command, and arguments checked before connecting
(issue 30), through the real entry point in-process."""

from __future__ import annotations

import contextlib
import re
import sys
from pathlib import Path

from typer.main import get_command
from typer.testing import CliRunner

from shardctl.cli import app
from shardctl.cli.app import GROUPS, invoked
from tests.unit.cli.test_cli import EXAMPLE, never_up, shardctl


def commands() -> list[str]:
    group = get_command(app)
    with group.make_context("shardctl", [], resilient_parsing=True) as ctx:
        return [name for name in group.list_commands(ctx)]  # type: ignore[attr-defined]


def test_help_lists_every_command_in_full_one_line_each_by_section() -> None:
    text = shardctl("--help", env={"COLUMNS": "80"}).stdout
    for name in commands():
        lines = [line for line in text.splitlines() if line.startswith(f"  {name} ")]
        assert len(lines) == 1, (name, text)
        assert not lines[0].endswith("...") and len(lines[0]) <= 80, lines[0]
    sections = [line.rstrip(":") for line in text.splitlines() if line.endswith(":")]
    assert [s for s in sections if s in GROUPS] == [g for g in GROUPS if g in sections]
    for group in ("Cluster", "Data", "Replication", "Resharding", "Roles", "Operations"):
        assert f"{group}:" in text


def test_h_and_the_help_command_are_help() -> None:
    full = shardctl("--help").stdout
    assert shardctl("-h").stdout == full
    assert shardctl("help").stdout.strip() == full.strip()
    status = shardctl("status", "--help").stdout
    assert shardctl("help", "status").stdout.strip() == status.strip()
    assert shardctl("status", "-h").stdout == status
    unknown = shardctl("help", "nonsense")
    assert unknown.code == 2 and "no command 'nonsense'" in unknown.stderr


def test_every_command_has_an_example_types_in_words_and_integer_bounds() -> None:
    for name in commands():
        ran = shardctl(name, "--help")
        assert ran.code == 0, (name, ran.stderr)
        text = ran.stdout
        assert "Example:" in text and f"shardctl {name}" in text.split("Example:")[1], name
        assert not re.search(r"<[a-z]", text), (name, text)  # no <int>, <list[str]>
        assert not re.search(r"\d e\+\d|\de\+\d", text), (name, text)  # no 1e+09
        assert "seed's" not in text and "seed-style" not in text


def test_a_command_built_alone_helps_as_in_the_whole_tree() -> None:
    # `shardctl status` builds only status's options (shardctl.cli.app.invoked); `help status`
    # builds every command, as --help and completion do
    assert invoked(["status"]) == "status" and invoked(["-f", "t.yaml", "-v", "ring"]) == "ring"
    assert invoked(["--topology=t.yaml", "validate", "-o", "json"]) == "validate"
    for whole in (["--help"], ["help", "status"], ["--version"], ["-vf", "t.yaml", "status"], []):
        assert invoked(whole) is None, whole
    for name in commands():
        alone = shardctl(name, "--help")
        assert alone.code == 0, (name, alone.stderr)
        assert alone.stdout.strip() == shardctl("help", name).stdout.strip(), name


def test_no_seed_in_any_help() -> None:
    for name in commands():
        text = shardctl(name, "--help").stdout.lower()
        assert "the seed" not in text, name


def complete(words: str, env_extra: dict[str, str] | None = None) -> list[str]:
    """What bash completion offers for the command line ``words`` (the last word incomplete)."""
    command = get_command(app)
    parts = words.split(" ")
    env = {
        "_SHARDCTL_COMPLETE": "complete_bash",
        "COMP_WORDS": words,
        "COMP_CWORD": str(len(parts) - 1),
    }
    with CliRunner().isolation(env={**env, **(env_extra or {})}) as (out, _, _):
        with contextlib.suppress(SystemExit):
            command.main(args=[], prog_name="shardctl", complete_var="_SHARDCTL_COMPLETE")
        sys.stdout.flush()
        return out.getvalue().decode().split()


def test_completion_offers_shards_nodes_and_only_the_shards_replicas_for_to() -> None:
    f = f"-f {EXAMPLE}"
    assert complete(f"shardctl {f} switchover shard-1 --to ") == ["shard-1-replica-1"]
    assert complete(f"shardctl {f} failover shard-2 --to shard-") == ["shard-2-replica-1"]
    assert complete(f"shardctl {f} remove-shard shard-") == [
        "shard-0",
        "shard-1",
        "shard-2",
        "shard-3",
    ]
    offered = complete(f"shardctl {f} psql shard-0")
    assert offered == ["shard-0", "shard-0-primary", "shard-0-replica-1"]
    assert complete(f"shardctl {f} logs shard-0 shard-3-") == [
        "shard-3-primary",
        "shard-3-replica-1",
    ]
    assert "status" in complete("shardctl help st")


def test_arguments_are_checked_before_the_cluster_is_contacted(tmp_path: Path) -> None:
    path = never_up(tmp_path)  # never brought up: contacting it would say "not running"
    checks = (
        (["switchover", "shard-9", "--yes"], "no shard 'shard-9'"),
        (["failover", "shard-9", "--yes"], "no shard 'shard-9'"),
        (["switchover", "shard-0", "--to", "shard-1-primary", "--yes"], "not a node of shard-0"),
        (["remove-shard", "shard-9", "--yes"], "no shard 'shard-9'"),
        (["add-shard", "shard-0"], "already has a shard 'shard-0'"),
        (["load", "--verify", str(tmp_path / "missing.jsonl")], "no such file"),
        (["load", "--ledger", str(tmp_path / "no" / "dir.jsonl")], "no directory"),
        (["psql", "shard-9"], "no shard or node 'shard-9'"),
        (["dsn", "nowhere-node"], "no shard or node 'nowhere-node'"),
        (["logs", "shard-0", "shard-9"], "no shard or node 'shard-9'"),
        (["logs", "--since", "yesterday"], "neither a duration"),
    )
    for args, says in checks:
        ran = shardctl(*args, "-f", path)
        assert ran.code == 2, (args, ran.stderr)
        assert says in ran.stderr, (args, ran.stderr)
        assert "not running" not in ran.stderr and "Traceback" not in ran.stderr


def test_errors_have_no_stray_blank_lines(tmp_path: Path) -> None:
    path = never_up(tmp_path)
    engine = {"DOCKER_HOST": "unix:///nonexistent/docker.sock"}
    for args in (["up"], ["status"], ["psql"], ["history"], ["logs"]):
        ran = shardctl(*args, "-f", path, env=engine)
        assert ran.code == 3, (args, ran.stderr)
        assert ran.stderr.strip() and "\n\n" not in ran.stderr and not ran.stderr.startswith("\n")
        assert "scripts/" not in ran.stderr  # a pip user has no repository scripts
        assert "DOCKER_HOST" in ran.stderr or "not running" in ran.stderr, (args, ran.stderr)
