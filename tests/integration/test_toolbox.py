"""The operator's toolbox on a live cluster, and again after a switchover: psql, dsn, logs and
history (issue 30); progress as plain lines when no terminal watches a rebalance; the docker
CLI's current context when DOCKER_HOST is unset."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import psycopg

from shardctl.config.addresses import address
from shardctl.config.credentials import Login
from tests.integration.conftest import ClusterFactory, run_shardctl

STAMPED = re.compile(r"^\d\d:\d\d:\d\d \S")


def psql_value(path: Path, *args: str, env: dict[str, str] | None = None) -> str:
    """One value that `shardctl psql ... -- -tA -c SQL` prints."""
    ran = run_shardctl("psql", "-f", path, *args, env=env, timeout=120)
    assert ran.returncode == 0, ran.stderr
    return ran.stdout.strip()


def test_psql_dsn_logs_history_follow_the_acting_roles(cluster_factory: ClusterFactory) -> None:
    cluster = cluster_factory(shards=2, replicas=1)
    path = cluster.topology.path
    logins = cluster.credentials()
    sql = ["--", "-tA", "-c", "SELECT pg_catalog.pg_is_in_recovery()::text || current_user"]
    for round_ in ("before", "after"):
        # dsn: the acting primary's address, the app role, no password unless asked
        ran = run_shardctl("dsn", "shard-0", "-f", path)
        assert ran.returncode == 0, ran.stderr
        uri = ran.stdout.strip()
        primary = cluster.topology.node(
            "shard-0-primary" if round_ == "before" else "shard-0-replica-1"
        )
        host, port = address(primary)
        assert (
            uri == f"postgresql://{logins.app_user}@{host}:{port}/{cluster.topology.spec.database}"
        )
        assert logins.app_password and logins.app_password not in uri and ran.stderr == ""
        secret = run_shardctl("dsn", "shard-0", "--with-password", "-f", path)
        assert secret.returncode == 0 and "warning" in secret.stderr
        with psycopg.connect(secret.stdout.strip(), connect_timeout=10) as conn:
            row = conn.execute("SELECT pg_catalog.pg_is_in_recovery(), current_user").fetchone()
            assert row == (False, logins.app_user)
        replica = run_shardctl("dsn", "shard-0", "--replica", "--role", "superuser", "-f", path)
        assert replica.returncode == 0 and logins.superuser in replica.stdout
        assert f":{port}/" not in replica.stdout

        # psql: local psql on the acting primary (superuser), a replica, a node by name
        superuser = logins.login(Login.SUPERUSER)[0]
        assert psql_value(path, "shard-0", *sql) == f"false{superuser}"
        assert psql_value(path, "shard-0", "--replica", *sql) == f"true{superuser}"
        assert psql_value(path, "shard-1-replica-1", "--role", "app", *sql) == (
            f"true{logins.app_user}"
        )

        # logs: every node of the shard, prefixed compose-style
        ran = run_shardctl("logs", "shard-0", "--tail", "5", "-f", path)
        assert ran.returncode == 0, ran.stderr
        prefixes = {line.split(" | ")[0].strip() for line in ran.stdout.splitlines()}
        assert prefixes == {"shard-0-primary", "shard-0-replica-1"}, ran.stdout
        counts = [line.split(" | ")[0].strip() for line in ran.stdout.splitlines()]
        assert counts.count("shard-0-primary") <= 5

        # history: the cluster's creation, then the switchover with who, time, pause
        ran = run_shardctl("history", "-o", "json", "-f", path)
        assert ran.returncode == 0, ran.stderr
        events = json.loads(ran.stdout)["events"]
        assert events[-1]["kind"] == "created"
        if round_ == "before":
            assert [e["kind"] for e in events] == ["created"]
            switched = run_shardctl("switchover", "shard-0", "--yes", "-f", path, timeout=300)
            assert switched.returncode == 0, switched.stderr
            cluster.follow_roles()
        else:
            change = events[0]
            assert change["kind"] == "switchover" and change["outcome"] == "done"
            assert change["detail"] == "shard-0: shard-0-primary -> shard-0-replica-1"
            assert change["mode"] == "manual" and "@" in change["by"]
            assert change["seconds"] > 0 and change["write_pause_ms"] is not None
            table = run_shardctl("history", "-f", path)
            assert table.returncode == 0 and "switchover" in table.stdout


def test_psql_inside_the_container_when_there_is_none_here(
    cluster_factory: ClusterFactory, tmp_path: Path
) -> None:
    cluster = cluster_factory(shards=1, replicas=1)
    docker = shutil.which("docker")
    assert docker is not None, "the docker command runs psql inside the container"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").symlink_to(docker)
    env = {"PATH": str(bin_dir)}  # no psql here: the container's is used
    sql = ["--", "-tA", "-c", "SELECT pg_catalog.pg_is_in_recovery()"]
    path = cluster.topology.path
    assert psql_value(path, "shard-0", *sql, env=env) == "f"
    assert psql_value(path, "shard-0", "--replica", "--role", "app", *sql, env=env) == "t"


def test_rebalance_without_a_terminal_writes_timestamped_progress(
    cluster_factory: ClusterFactory,
) -> None:
    cluster = cluster_factory(shards=2, replicas=0)
    path = cluster.topology.path
    filled = run_shardctl("load", "--bulk", "--rows", "20000", "-f", path)
    assert filled.returncode == 0, filled.stderr
    added = run_shardctl("add-shard", "shard-2", "--replicas", "0", "-f", path)
    assert added.returncode == 0, added.stderr
    assert any(STAMPED.match(line) for line in added.stderr.splitlines()), added.stderr
    ran = run_shardctl("rebalance", "--yes", "--rows-per-chunk", "1000", "-f", path)
    assert ran.returncode == 0, ran.stderr
    progress = [line for line in ran.stderr.splitlines() if STAMPED.match(line)]
    assert len(progress) >= 2, ran.stderr  # each phase announces itself, with the time
    assert "\x1b[" not in ran.stderr  # no terminal codes in a log


def test_the_current_docker_context_is_used_when_docker_host_is_unset(
    cluster_factory: ClusterFactory, tmp_path: Path
) -> None:
    cluster = cluster_factory(shards=1, replicas=0)
    engine = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    config = tmp_path / "docker-config"
    meta = config / "contexts" / "meta" / hashlib.sha256(b"shardctl-test").hexdigest()
    meta.mkdir(parents=True)
    (config / "config.json").write_text(json.dumps({"currentContext": "shardctl-test"}))
    endpoints = {"docker": {"Host": engine, "SkipTLSVerify": False}}
    (meta / "meta.json").write_text(json.dumps({"Name": "shardctl-test", "Endpoints": endpoints}))
    env = {k: v for k, v in os.environ.items() if k != "DOCKER_HOST"}
    env["DOCKER_CONFIG"] = str(config)
    status = [sys.executable, "-m", "shardctl", "status", "-f", str(cluster.topology.path)]
    ran = subprocess.run(status, env=env, capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr
    if engine != "unix:///var/run/docker.sock":  # without the context: the default socket
        env["DOCKER_CONFIG"] = str(tmp_path / "empty")
        lost = subprocess.run(status, env=env, capture_output=True, text=True, timeout=120)
        assert lost.returncode == 3 and "docker context use" in lost.stderr, lost.stderr
