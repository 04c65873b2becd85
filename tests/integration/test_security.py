"""Least privilege inside a real cluster (issue 18): secret files, pg_hba, the application role.

One 1 shard x 1 replica cluster for the module, brought up by the real CLI while every
process's command line on this machine is sampled (the containers' processes included: they
share its process table), so that a password passed as an argument during bootstrap is caught.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import psycopg.errors
import pytest

from shardctl.config.credentials import Credentials, Login
from shardctl.config.topology import Node
from shardctl.ops.cluster import Cluster
from shardctl.ring.hashing import SPACE, Move
from shardctl.router.router import Router
from shardctl.state import fence
from shardctl.state.fence import FENCE_SQLSTATE, RangeState
from tests.clusters import pgdata_of, sdk_container
from tests.integration.conftest import make_topology, run_shardctl

pytestmark = pytest.mark.integration

OPERATION = 9_999
"""The reshard id this module's fences use (no real reshard runs here)."""


@dataclass
class Bootstrapped:
    """The module's cluster, what `up` printed, and every command line seen while it ran."""

    cluster: Cluster
    path: Path
    up_output: str
    command_lines: set[str] = field(default_factory=set)

    @property
    def creds(self) -> Credentials:
        """The cluster's passwords, as the CLI stored them."""
        return self.cluster.credentials()

    def secrets(self) -> dict[str, str]:
        """Every password of the cluster, by role."""
        c = self.creds
        assert c.app_password is not None
        return {
            "superuser": c.superuser_password,
            "replication": c.replication_password,
            "app": c.app_password,
        }


def _command_lines() -> set[str]:
    """What ``ps`` shows: every process's arguments, read from /proc."""
    seen: set[str] = set()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            raw = cmdline.read_bytes()
        except OSError:
            continue  # the process ended
        if raw:
            seen.add(raw.replace(b"\0", b" ").decode("utf-8", "replace"))
    return seen


@pytest.fixture(scope="module")
def booted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bootstrapped]:
    path = make_topology(tmp_path_factory.mktemp("security"), shards=1, replicas=1)
    seen: set[str] = set()
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            seen.update(_command_lines())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    up = subprocess.Popen(
        [sys.executable, "-m", "shardctl", "up", "-f", str(path), "--timeout", "180"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    cluster = Cluster.load(path)
    try:
        output, _ = up.communicate(timeout=300)
        done.set()
        sampler.join()
        assert up.returncode == 0, output
        cluster.follow_roles()
        yield Bootstrapped(cluster, path, output, seen)
    finally:
        done.set()
        if up.poll() is None:
            up.kill()
        try:
            cluster.down(volumes=True)
        finally:
            cluster.close()


def _node(booted: Bootstrapped, role: str) -> Node:
    primary, replica = booted.cluster.topology.shard_nodes("shard-0")
    return primary if role == "primary" else replica


def _exec(booted: Bootstrapped, node: Node, *argv: str, **options: Any) -> tuple[int, str]:
    container = sdk_container(booted.cluster, node)
    assert container is not None
    result = container.exec_run(list(argv), **options)
    output = result.output
    assert isinstance(output, bytes) and result.exit_code is not None  # not streamed
    return result.exit_code, output.decode("utf-8", "replace")


# ------------------------------------------------------------------ secret files


@pytest.mark.parametrize("role", ["primary", "replica"])
def test_secret_files_are_the_servers_alone_and_only_where_needed(
    booted: Bootstrapped, role: str
) -> None:
    node = _node(booted, role)
    code, out = _exec(
        booted, node, "sh", "-c", "stat -c '%a %U %n' /tmp/shardctl /tmp/shardctl/* /tmp/shardctl-*"
    )
    assert code == 0, out
    modes = {line.split()[2]: tuple(line.split()[:2]) for line in out.splitlines()}
    # Replicas never hold the superuser's password; a primary needs it for initdb only.
    assert modes == {
        "/tmp/shardctl": ("700", "postgres"),
        "/tmp/shardctl/replication": ("600", "postgres"),
        "/tmp/shardctl-pgpass": ("600", "postgres"),
    }
    code, out = _exec(booted, node, "cat", "/tmp/shardctl/replication", user="nobody")
    assert code != 0 and "Permission denied" in out


def test_pg_hba_names_who_connects_from_where(booted: Bootstrapped) -> None:
    node = _node(booted, "primary")
    container = sdk_container(booted.cluster, node)
    assert container is not None
    pgdata = pgdata_of(booted.cluster, node)
    code, out = _exec(booted, node, "cat", f"{pgdata}/pg_hba.conf")
    assert code == 0
    rules = [line.split() for line in out.splitlines() if line and not line.startswith("#")]
    creds = booted.creds
    assert rules[0] == ["local", "all", "all", "scram-sha-256"]
    assert rules[1][:3] == ["host", "all", creds.superuser] and rules[1][3].endswith("/32")
    assert rules[2] == ["host", "all", creds.superuser, "all", "reject"]
    assert rules[3][:3] == ["host", "replication", creds.replication_user]
    assert rules[4] == ["host", "app", creds.app_user, "all", "scram-sha-256"]
    assert len(rules) == 5


def test_no_superuser_login_over_tcp_from_a_replica(booted: Bootstrapped) -> None:
    primary, replica = _node(booted, "primary"), _node(booted, "replica")
    creds = booted.creds

    def login(user: str, password: str, dbname: str) -> tuple[int, str]:
        # The right password, handed to psql for this probe only: pg_hba must refuse anyway.
        return _exec(
            booted,
            replica,
            "psql",
            f"host={primary.container} dbname={dbname} user={user} connect_timeout=5",
            "-c",
            "SELECT 1",
            environment={"PGPASSWORD": password},
        )

    code, out = login(creds.superuser, creds.superuser_password, "postgres")
    assert code != 0 and "pg_hba.conf rejects connection" in out, out
    code, out = login(creds.superuser, creds.superuser_password, "app")
    assert code != 0 and "pg_hba.conf rejects connection" in out, out
    # The network itself works: the application role gets in from the same place.
    assert creds.app_password is not None
    code, out = login(creds.app_user, creds.app_password, "app")
    assert code == 0, out


# ------------------------------------------------------------------ the application role


@pytest.fixture
def app_conn(booted: Bootstrapped) -> Iterator[psycopg.Connection[Any]]:
    """A connection to the primary exactly as a Router makes it (the application role)."""
    with (
        Router(booted.cluster) as router,
        router.connection(_node(booted, "primary").name) as conn,
    ):
        assert conn.execute("SELECT current_user").fetchone() == (booted.creds.app_user,)
        yield conn


@pytest.fixture
def admin(booted: Bootstrapped) -> Iterator[psycopg.Connection[Any]]:
    """A superuser connection to the primary (shardctl's own administration)."""
    from shardctl.db import pg

    node = _node(booted, "primary")
    with pg.connect(node, booted.creds, "app") as conn:
        yield conn


DENIED = [
    # alter or drop shardctl.*
    "DROP TABLE shardctl.moving",
    "DROP SCHEMA shardctl CASCADE",
    "ALTER TABLE shardctl.ring ADD COLUMN x int",
    "DELETE FROM shardctl.moving",
    "INSERT INTO shardctl.ring (epoch) VALUES (1000000)",
    "UPDATE shardctl.moving SET state = 'capturing'",
    "CREATE OR REPLACE FUNCTION shardctl.assert_owner(k text) RETURNS void LANGUAGE sql AS ''",
    "ALTER FUNCTION shardctl.check_key(text, text) OWNER TO CURRENT_USER",
    "SELECT shardctl.check_key('1', NULL)",
    # bypass the fence
    "SET session_replication_role = replica",
    "ALTER TABLE users DISABLE TRIGGER shardctl_guard",
    "DROP TRIGGER shardctl_guard ON users",
    "TRUNCATE users",
    "ALTER TABLE users OWNER TO CURRENT_USER",
    # read other roles' secrets
    "SELECT rolpassword FROM pg_catalog.pg_authid",
    "SELECT passwd FROM pg_catalog.pg_shadow",
    "SELECT pg_catalog.pg_read_file('/tmp/shardctl/replication')",
    "COPY users (first_name) FROM '/tmp/shardctl-pgpass'",
    # create roles, databases, replication slots, objects
    "CREATE ROLE intruder LOGIN SUPERUSER",
    "CREATE DATABASE intruder",
    "SELECT pg_catalog.pg_create_physical_replication_slot('intruder')",
    "SELECT pg_catalog.pg_create_logical_replication_slot('intruder', 'pgoutput')",
    "CREATE TABLE intruder (id int)",
    "CREATE SCHEMA intruder",
    "ALTER SYSTEM SET fsync = off",
    "GRANT pg_read_server_files TO CURRENT_USER",
]


@pytest.mark.parametrize("statement", DENIED)
def test_the_application_role_is_denied(app_conn: psycopg.Connection[Any], statement: str) -> None:
    with pytest.raises(psycopg.Error) as refused:
        app_conn.execute(statement.encode())
    assert refused.value.sqlstate == "42501", refused.value  # insufficient_privilege


def test_the_router_writes_through_the_fence_as_the_application_role(
    booted: Bootstrapped, admin: psycopg.Connection[Any]
) -> None:
    key = "00000000-0000-4000-8000-00000000a001"
    with Router(booted.cluster) as router:
        assert router.execute(key, "INSERT INTO users (id) VALUES (%s)", (key,)) == 1
        assert router.fetch(
            key, "SELECT id::text FROM users WHERE id = %s", (key,), prefer="primary"
        )
        # Capturing: the trigger (SECURITY DEFINER) records the app's write in shardctl.changes,
        # which the app itself may not touch.
        whole = [Move(0, SPACE, "shard-0", "shard-9")]
        fence.give_away(admin, OPERATION, whole, RangeState.CAPTURING)
        try:
            router.execute(key, "UPDATE users SET first_name = 'x' WHERE id = %s", (key,))
            logged = admin.execute(
                "SELECT count(*) FROM shardctl.changes WHERE target = 'shard-9' AND key = %s",
                (key,),
            ).fetchone()
            assert logged == (1,)
            # Fenced: refused, and the app has no way around it.
            fence.set_state(admin, OPERATION, RangeState.FENCED)
            with router.connection(_node(booted, "primary").name) as conn:
                for sql_text in (
                    "SELECT shardctl.assert_owner('1')",
                    "INSERT INTO users (id) VALUES (gen_random_uuid())",
                    "UPDATE users SET first_name = 'y'",
                ):
                    with pytest.raises(psycopg.Error) as refused:
                        conn.execute(sql_text.encode())
                    assert refused.value.sqlstate == FENCE_SQLSTATE, sql_text
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute("SET session_replication_role = replica")
        finally:
            fence.take_back(admin, OPERATION)
            fence.forget_changes(admin, ["shard-9"])
        assert router.execute(key, "DELETE FROM users WHERE id = %s", (key,)) == 1


def test_admin_tools_keep_the_superuser(booted: Bootstrapped) -> None:
    with (
        Router(booted.cluster, login=Login.SUPERUSER) as router,
        router.connection(_node(booted, "primary").name) as conn,
    ):
        assert conn.execute("SELECT current_user").fetchone() == (booted.creds.superuser,)


# ------------------------------------------------------------------ nothing leaks


def test_no_password_on_any_command_line_during_up(booted: Bootstrapped) -> None:
    lines = booted.command_lines
    # The sampler saw the bootstrap at work, not just an idle machine.
    assert any("pg_basebackup" in line or "initdb" in line for line in lines), sorted(lines)[:20]
    for secret in booted.secrets().values():
        leaked = [line for line in lines if secret in line]
        assert not leaked


def _leaks(booted: Bootstrapped, text: str) -> list[str]:
    return [role for role, secret in booted.secrets().items() if secret in text]


@pytest.mark.parametrize(
    "command",
    [
        ["validate"],
        ["status", "-o", "json"],
        ["status"],
        ["verify-replication", "-o", "json"],
        ["ring", "-o", "json"],
        ["distribution", "-o", "json"],
        ["compose"],
        ["up"],
    ],
)
def test_no_secret_in_command_output(booted: Bootstrapped, command: list[str]) -> None:
    result = run_shardctl(*command, "-f", booted.path)
    assert result.returncode in (0, 1), result.stderr
    assert (result.stdout + result.stderr).strip()
    assert not _leaks(booted, result.stdout + result.stderr)
    assert not _leaks(booted, booted.up_output)


def test_no_secret_in_docker_inspect(booted: Bootstrapped) -> None:
    for node in booted.cluster.topology.nodes:
        container = sdk_container(booted.cluster, node)
        assert container is not None
        assert not _leaks(booted, json.dumps(container.attrs))
