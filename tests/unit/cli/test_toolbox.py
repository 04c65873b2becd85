"""The toolbox's pure parts: which node a target means, URIs and password files, log lines,
--since, log rotation in the container spec, plain progress lines."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import typer

from shardctl.cli import render
from shardctl.cli.connect import pick
from shardctl.cli.logs import parse_since, targets
from shardctl.config import topology
from shardctl.config.credentials import Credentials, Login
from shardctl.db.uri import pgpass_line, uri
from shardctl.docker import logs
from shardctl.docker.records import create_arguments
from shardctl.docker.specs import container_spec
from shardctl.errors import UsageError
from tests.conftest import REPO

EXAMPLE = topology.load(REPO / "topology.yaml")


def test_a_target_is_a_shards_acting_primary_a_replica_or_a_node() -> None:
    assert pick(EXAMPLE, "shard-1", False).name == "shard-1-primary"
    assert pick(EXAMPLE, "shard-1", True).name == "shard-1-replica-1"
    assert pick(EXAMPLE, None, False).name == "shard-0-primary"
    assert pick(EXAMPLE, "shard-2-replica-1", False).name == "shard-2-replica-1"
    switched = EXAMPLE.with_acting({"shard-1": "shard-1-replica-1"})
    assert pick(switched, "shard-1", False).name == "shard-1-replica-1"
    assert pick(switched, "shard-1", True).name == "shard-1-primary"
    with pytest.raises(UsageError, match="takes a shard"):
        pick(EXAMPLE, "shard-1-primary", True)
    with pytest.raises(UsageError, match="no shard or node 'shard-9'"):
        pick(EXAMPLE, "shard-9", False)


def credentials(password: str = "p:w@d/?") -> Credentials:
    return Credentials(
        superuser="postgres",
        superuser_password="secret-super",
        replication_user="replicator",
        replication_password="secret-repl",
        app_user="app",
        app_password=password,
    )


def test_the_uri_holds_no_password_unless_asked_and_quotes_what_it_holds() -> None:
    node = EXAMPLE.node("shard-0-primary")
    plain = uri(node, credentials(), "app")
    assert plain == f"postgresql://app@127.0.0.1:{node.host_port}/app"
    secret = uri(node, credentials(), "app", with_password=True)
    assert secret == f"postgresql://app:p%3Aw%40d%2F%3F@127.0.0.1:{node.host_port}/app"
    admin = uri(node, credentials(), "app", login=Login.SUPERUSER)
    assert admin.startswith("postgresql://postgres@") and "secret" not in admin


def test_a_pgpass_line_escapes_colons_and_backslashes() -> None:
    line = pgpass_line("127.0.0.1", 5432, "app", "app", "a:b\\c")
    assert line == "127.0.0.1:5432:app:app:a\\:b\\\\c\n"


def test_log_lines_carry_the_engines_time_and_merge_in_order() -> None:
    raw = (
        b"2026-12-07T10:00:01.123456789Z LOG:  ready\n"
        b"2026-12-07T10:00:00.5Z LOG:  starting\n"
        b"garbage-without-time\n"
    )
    lines = list(logs.parse("shard-0-primary", raw))
    assert lines[0].at == datetime(2026, 12, 7, 10, 0, 1, 123456, tzinfo=UTC)
    assert lines[0].text == "LOG:  ready" and lines[1].at.microsecond == 500000
    assert lines[2].at.year == 1970  # unparseable: first, not lost
    assert sorted(lines, key=lambda line: line.at)[-1].text == "LOG:  ready"


def test_since_is_a_duration_back_or_a_time() -> None:
    now = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
    assert parse_since("10m", now) == now - timedelta(minutes=10)
    assert parse_since("2h", now) == now - timedelta(hours=2)
    assert parse_since("2026-12-07T10:00+00:00", now) == datetime(2026, 12, 7, 10, tzinfo=UTC)
    assert parse_since("2026-12-07T10:00", now).tzinfo is not None  # local time
    for bad in ("yesterday", "10 parsecs", "-5m", ""):
        with pytest.raises(typer.BadParameter):
            parse_since(bad, now)


def test_log_targets_are_shards_or_nodes_in_declared_order() -> None:
    assert [n.name for n in targets(EXAMPLE, ["shard-1"])] == [
        "shard-1-primary",
        "shard-1-replica-1",
    ]
    chosen = targets(EXAMPLE, ["shard-3-replica-1", "shard-0"])
    assert [n.name for n in chosen] == ["shard-0-primary", "shard-0-replica-1", "shard-3-replica-1"]
    assert len(targets(EXAMPLE, [])) == len(EXAMPLE.nodes)
    with pytest.raises(UsageError, match="'nope'"):
        targets(EXAMPLE, ["shard-0", "nope"])


def test_containers_rotate_their_logs_as_the_topology_says(tmp_path: Path) -> None:
    node = EXAMPLE.node("shard-0-primary")
    default = create_arguments(container_spec(EXAMPLE, node, "/data"))["log_config"]
    assert default == {"Type": "json-file", "Config": {"max-size": "10m", "max-file": "3"}}
    path = tmp_path / "topology.yaml"
    path.write_text(
        "cluster: rotated\nlogs: {max_size: 50m, max_files: 5}\n"
        "shards:\n  - name: shard-0\n    replicas: 0\n",
        encoding="utf-8",
    )
    rotated = topology.load(path)
    spec = container_spec(rotated, rotated.node("shard-0-primary"), "/data")
    assert create_arguments(spec)["log_config"] == {
        "Type": "json-file",
        "Config": {"max-size": "50m", "max-file": "5"},
    }
    path.write_text(path.read_text().replace("50m", "50 MB"), encoding="utf-8")
    with pytest.raises(UsageError, match="max_size"):
        topology.load(path)


def test_progress_without_a_terminal_is_timestamped_lines(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [100.0]
    monkeypatch.setattr("shardctl.cli.render.time.monotonic", lambda: clock[0])
    with render.progress(plain=lambda task: f"{task.fields['node']}: {task.description}") as bar:
        assert isinstance(bar, render.PlainProgress)  # captured: stderr is no terminal
        task = bar.add_task("creating", node="n1")
        bar.update(task, description="creating")  # same step, too soon: nothing
        bar.update(task, description="cloning")  # a new step: a line
        clock[0] += render.PLAIN_EVERY
        bar.update(task, description="cloning")  # a while later: a line
    lines = capsys.readouterr().err.splitlines()
    assert [line[9:] for line in lines] == ["n1: creating", "n1: cloning", "n1: cloning"]
    assert all(re.match(r"\d\d:\d\d:\d\d ", line) for line in lines)
