"""``tls: required`` on a real cluster (issue 18): plaintext TCP refused for every role, TLS
logins verified against the cluster CA, the Router and streaming replication over TLS, key
files the server's alone, and no key material in any output.

One 1 shard x 1 replica cluster for the module, brought up by the real CLI.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from shardctl.config import tls
from shardctl.config.credentials import Credentials
from shardctl.config.topology import Node
from shardctl.db import pg
from shardctl.ops.cluster import Cluster
from shardctl.router.router import Router
from tests.clusters import sdk_container
from tests.integration.conftest import make_topology, run_shardctl

pytestmark = pytest.mark.integration


@dataclass
class Booted:
    """The module's cluster and what `up` printed."""

    cluster: Cluster
    path: Path
    up_output: str

    @property
    def creds(self) -> Credentials:
        """The cluster's passwords and CA, as the CLI stored them."""
        return self.cluster.credentials()

    def node(self, role: str) -> Node:
        """The shard's primary or its replica."""
        primary, replica = self.cluster.topology.shard_nodes("shard-0")
        return primary if role == "primary" else replica

    def exec(self, node: Node, *argv: str, **options: Any) -> tuple[int, str]:
        """Run ``argv`` in ``node``'s container (as postgres unless told)."""
        container = sdk_container(self.cluster, node)
        assert container is not None
        result = container.exec_run(list(argv), **options)
        output = result.output
        assert isinstance(output, bytes) and result.exit_code is not None
        return result.exit_code, output.decode("utf-8", "replace")


@pytest.fixture(scope="module")
def booted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Booted]:
    folder = tmp_path_factory.mktemp("tls")
    path = make_topology(
        folder, shards=1, replicas=1, cluster=f"h18-tls-{uuid.uuid4().hex[:6]}", tls="required"
    )
    cluster = Cluster.load(path)
    try:
        up = subprocess.run(
            [sys.executable, "-m", "shardctl", "up", "-f", str(path), "--timeout", "180"],
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
        )
        assert up.returncode == 0, up.stdout + up.stderr
        cluster.follow_roles()
        yield Booted(cluster, path, up.stdout + up.stderr)
    finally:
        try:
            cluster.down(volumes=True)
        finally:
            cluster.close()


def _secret_material(booted: Booted) -> dict[str, str]:
    """Every key and password of the cluster: the CA's key, each node's key, the passwords."""
    creds = booted.creds
    assert creds.tls_ca is not None and creds.app_password is not None
    found = {
        "ca key": _key_body(creds.tls_ca.key),
        "superuser": creds.superuser_password,
        "replication": creds.replication_password,
        "app": creds.app_password,
    }
    for node in booted.cluster.topology.nodes:
        code, key = booted.exec(node, "cat", "/tmp/shardctl/server.key", user="postgres")
        assert code == 0, key
        found[f"{node.name} key"] = _key_body(key)
    return found


def _key_body(pem: str) -> str:
    """The secret part of a PEM key's base64 body: what a leak would show even re-wrapped.

    Not its start: the first 48 characters are the ASN.1 header every P-256 key shares; the
    private scalar follows it.
    """
    body = "".join(line for line in pem.splitlines() if not line.startswith("-----"))
    assert len(body) > 90
    return body[48:88]


def _leaks(booted: Booted, text: str) -> list[str]:
    flat = "".join(text.split())  # a key folded or escaped across lines is still found
    return [what for what, secret in _secret_material(booted).items() if secret in flat]


# ------------------------------------------------------------------ who gets in, and how


def _psql(booted: Booted, user: str, password: str, sslmode: str, **extra: str) -> tuple[int, str]:
    """psql from the replica's container to the primary's, as ``user`` with its right password."""
    primary = booted.node("primary")
    dbname = {booted.creds.app_user: "app"}.get(user, "postgres")
    params = {"host": primary.container, "user": user, "dbname": dbname, "sslmode": sslmode}
    params |= {"connect_timeout": "5", **extra}
    sql = "IDENTIFY_SYSTEM" if "replication" in extra else "SELECT 1"
    return booted.exec(
        booted.node("replica"),
        "psql",
        " ".join(f"{k}={v}" for k, v in params.items()),
        "-c",
        sql,
        environment={"PGPASSWORD": password},  # this probe only: the right password
    )


@pytest.mark.parametrize("role", ["app", "replication"])
def test_plaintext_tcp_is_refused_where_tls_gets_in(booted: Booted, role: str) -> None:
    creds = booted.creds
    assert creds.app_password is not None
    user, password, extra = {
        "app": (creds.app_user, creds.app_password, {}),
        "replication": (creds.replication_user, creds.replication_password, {"replication": "1"}),
    }[role]
    code, out = _psql(booted, user, password, "disable", **extra)
    assert code != 0 and "no encryption" in out, out
    # Same container, same role, same password: only TLS differs, and with it the login works.
    code, out = _psql(booted, user, password, "require", **extra)
    assert code == 0, out


@pytest.mark.parametrize("login", ["superuser", "app"])
def test_plaintext_from_shardctls_host_is_refused(booted: Booted, login: str) -> None:
    primary = booted.node("primary")
    creds = booted.creds
    user, password = (
        (creds.superuser, creds.superuser_password)
        if login == "superuser"
        else (creds.app_user, creds.app_password)
    )
    info = pg.conninfo(primary, creds, "app", sslmode="disable")
    info = psycopg.conninfo.make_conninfo(info, user=user, password=password or "")
    with pytest.raises(psycopg.OperationalError, match="no encryption"):
        psycopg.connect(info)
    with psycopg.connect(psycopg.conninfo.make_conninfo(info, sslmode="verify-full")) as conn:
        row = conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        assert row.fetchone() == (True,)


def test_shardctl_verifies_the_server_against_the_cluster_ca(
    booted: Booted, tmp_path: Path
) -> None:
    primary = booted.node("primary")
    info = psycopg.conninfo.conninfo_to_dict(pg.conninfo(primary, booted.creds, "app"))
    assert info["sslmode"] == "verify-full"
    with pg.connect(primary, booted.creds, "app") as conn:
        assert conn.execute("SHOW ssl").fetchone() == ("on",)
    # Another CA's root: the same server is not trusted, so the check is real.
    stranger = tmp_path / "stranger.crt"
    stranger.write_text(tls.make_ca("stranger").cert, encoding="utf-8")
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        psycopg.connect(pg.conninfo(primary, booted.creds, "app", sslrootcert=str(stranger)))


def test_the_router_works_over_tls(booted: Booted) -> None:
    key = "00000000-0000-4000-8000-00000000b001"
    with Router(booted.cluster) as router:
        assert router.execute(key, "INSERT INTO users (id) VALUES (%s)", (key,)) == 1
        assert router.fetch(
            key, "SELECT id::text FROM users WHERE id = %s", (key,), prefer="primary"
        )
        with router.connection(booted.node("primary").name) as conn:
            row = conn.execute(
                "SELECT current_user, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
            ).fetchone()
            assert row == (booted.creds.app_user, True)
        assert router.execute(key, "DELETE FROM users WHERE id = %s", (key,)) == 1


def test_the_replica_streams_over_tls(booted: Booted) -> None:
    with pg.connect(booted.node("primary"), booted.creds, "postgres") as conn:
        rows = conn.execute(
            "SELECT r.application_name, r.usename, s.ssl FROM pg_stat_replication r "
            "JOIN pg_stat_ssl s USING (pid)"
        ).fetchall()
    assert rows == [(booted.node("replica").name, booted.creds.replication_user, True)]
    result = run_shardctl("verify-replication", "-f", booted.path)
    assert result.returncode == 0, result.stdout + result.stderr


# ------------------------------------------------------------------ files


@pytest.mark.parametrize("role", ["primary", "replica"])
def test_key_files_are_the_servers_alone(booted: Booted, role: str) -> None:
    node = booted.node(role)
    code, out = booted.exec(node, "sh", "-c", "stat -c '%a %U %n' /tmp/shardctl/*")
    assert code == 0, out
    modes = {line.split()[2]: tuple(line.split()[:2]) for line in out.splitlines()}
    for name in ("server.crt", "server.key", "ca.crt", "replication"):
        assert modes[f"/tmp/shardctl/{name}"] == ("600", "postgres"), modes
    assert "/tmp/shardctl/superuser" not in modes  # deleted after initdb, never on a replica
    code, out = booted.exec(node, "cat", "/tmp/shardctl/server.key", user="nobody")
    assert code != 0 and "Permission denied" in out


def test_the_host_keeps_the_ca_key_private(booted: Booted) -> None:
    creds = booted.creds
    assert creds.tls_root is not None
    for path in (creds.tls_root, booted.path.parent / "secrets.json"):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path
    # The CA's key never enters a container: only its certificate does.
    assert creds.tls_ca is not None
    for node in booted.cluster.topology.nodes:
        code, out = booted.exec(node, "sh", "-c", "cat /tmp/shardctl/*", user="postgres")
        assert code == 0 and _key_body(creds.tls_ca.key) not in "".join(out.split())
        # The same search does find the node's own key there: it would see the CA's.
        assert _secret_material(booted)[f"{node.name} key"] in "".join(out.split())


# ------------------------------------------------------------------ nothing leaks


@pytest.mark.parametrize(
    "command",
    [
        ["validate"],
        ["status", "-o", "json"],
        ["verify-replication", "-o", "json"],
        ["ring", "-o", "json"],
        ["up"],
    ],
)
def test_no_key_in_command_output(booted: Booted, command: list[str]) -> None:
    result = run_shardctl(*command, "-f", booted.path)
    assert result.returncode == 0, result.stderr
    assert (result.stdout + result.stderr).strip()
    assert not _leaks(booted, result.stdout + result.stderr)
    assert not _leaks(booted, booted.up_output)


def test_no_key_in_docker_inspect(booted: Booted) -> None:
    for node in booted.cluster.topology.nodes:
        container = sdk_container(booted.cluster, node)
        assert container is not None
        assert not _leaks(booted, json.dumps(container.attrs))


# ------------------------------------------------------------------ turning it on


def test_turning_tls_on_for_a_running_cluster(tmp_path: Path) -> None:
    path = make_topology(
        tmp_path, shards=1, replicas=1, cluster=f"h18-tlson-{uuid.uuid4().hex[:6]}"
    )
    try:
        assert run_shardctl("up", "-f", path).returncode == 0
        with path.open("a", encoding="utf-8") as topology_file:
            topology_file.write("tls: required\n")
        # Running servers without TLS: refused in one line, nothing read or changed in clear.
        refused = run_shardctl("up", "-f", path, timeout=120)
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert "runs without TLS" in refused.stderr and "shardctl down" in refused.stderr
        said = [line for line in refused.stderr.splitlines() if line.strip()]
        assert len(said) == 1 and said[0].startswith("error: "), refused.stderr
        # The way the message gives: down (the data stays), then up.
        assert run_shardctl("down", "-f", path).returncode == 0
        up = run_shardctl("up", "-f", path)
        assert up.returncode == 0, up.stdout + up.stderr
        cluster = Cluster.load(path)
        try:
            cluster.follow_roles()
            primary, replica = cluster.topology.shard_nodes("shard-0")
            with pg.connect(replica, cluster.credentials(), "postgres") as conn:
                row = conn.execute("SELECT current_setting('primary_conninfo')").fetchone()
            assert row is not None
            # Cloned before TLS, re-pointed by up: it verifies its primary now.
            upstream = psycopg.conninfo.conninfo_to_dict(str(row[0]))
            assert upstream["sslmode"] == "verify-full"
            verified = run_shardctl("verify-replication", "-f", path)
            assert verified.returncode == 0, verified.stdout + verified.stderr
            with pg.connect(primary, cluster.credentials(), "postgres") as conn:
                rows = conn.execute(
                    "SELECT s.ssl FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid)"
                ).fetchall()
            assert rows == [(True,)]
        finally:
            cluster.close()
    finally:
        removed = run_shardctl("down", "--volumes", "--yes", "-f", path)
        assert removed.returncode == 0, removed.stderr


# ------------------------------------------------------------------ backups under TLS


def _rows(cluster: Cluster) -> set[str]:
    primary = cluster.topology.shard_nodes("shard-0")[0]
    with pg.connect(primary, cluster.credentials(), "app") as conn:
        return {str(row[0]) for row in conn.execute("SELECT id FROM users")}


def test_backup_archiving_and_restore_over_tls(tmp_path: Path) -> None:
    """The backup node streams and copies over TLS (refused in clear), and a point restores
    into a new ``tls: required`` cluster from the same repository."""
    repository = tmp_path / "repository"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    backup = {"repository": str(repository)}
    path = make_topology(tmp_path / "a", shards=1, replicas=1, tls="required", backup=backup)
    other = make_topology(tmp_path / "b", shards=1, replicas=1, tls="required", backup=backup)
    try:
        up = run_shardctl("up", "-f", path, timeout=300)
        assert up.returncode == 0, up.stdout + up.stderr
        cluster = Cluster.load(path)
        cluster.follow_roles()
        with Router(cluster) as router:
            before = [uuid.uuid4() for _ in range(20)]
            for key in before:
                router.execute(key, "INSERT INTO users (id, first_name) VALUES (%s, 'b')", (key,))
            taken = run_shardctl("backup", "--name", "b1", "-f", path, timeout=300)
            assert taken.returncode == 0, taken.stdout + taken.stderr
            point = run_shardctl("backup", "--point", "p1", "-f", path)
            assert point.returncode == 0, point.stdout + point.stderr
            after = [uuid.uuid4() for _ in range(20)]
            for key in after:
                router.execute(key, "INSERT INTO users (id, first_name) VALUES (%s, 'a')", (key,))
        primary = cluster.topology.shard_nodes("shard-0")[0]
        with pg.connect(primary, cluster.credentials(), "postgres") as conn:
            streams = conn.execute(
                "SELECT r.application_name, s.ssl FROM pg_catalog.pg_stat_replication r "
                "JOIN pg_catalog.pg_stat_ssl s USING (pid)"
            ).fetchall()
        assert any(name == "shardctl-backup" for name, _ in streams), streams
        assert all(ssl for _, ssl in streams), streams  # the archive and the replica: TLS
        checked = run_shardctl("verify-replication", "-o", "json", "-f", path)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        results = [c["result"] for c in json.loads(checked.stdout)["checks"]]
        archiving = [c for c in json.loads(checked.stdout)["checks"] if c["check"] == "archiving"]
        assert [c["result"] for c in archiving] == ["pass"], results

        built = run_shardctl("-f", other, "restore", "--from", cluster.topology.cluster,
                             "--to", "p1", timeout=600)  # fmt: skip
        assert built.returncode == 0, built.stdout + built.stderr
        copy = Cluster.load(other)
        rows = _rows(copy)
        assert {str(k) for k in before} <= rows and not {str(k) for k in after} & rows
        deep = run_shardctl("verify-replication", "--deep", "-f", other)
        assert deep.returncode == 0, deep.stdout + deep.stderr
        with Router(copy) as router:  # over TLS, with the new cluster's own credentials
            key = uuid.uuid4()
            router.execute(key, "INSERT INTO users (id, first_name) VALUES (%s, 'n')", (key,))
        assert copy.credentials().app_password != cluster.credentials().app_password
    finally:
        for each in (other, path):  # whatever was made, even by a failed restore
            made = Cluster.load(each)
            try:
                made.down(volumes=True)
            finally:
                made.close()
