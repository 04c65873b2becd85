"""Least privilege without Docker: exposing the cluster, the application role's password, what a
container is given, and the pg_hba the bootstrap writes (run by a real shell)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shardctl.config import credentials, topology
from shardctl.config.credentials import Credentials, Login
from shardctl.config.schema import Role
from shardctl.docker.engine import user_ids
from shardctl.docker.specs import BOOTSTRAP, container_spec, secret_names
from shardctl.errors import TopologyError, UsageError

MINIMAL = "cluster: demo\nshards:\n  - name: a\n"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "topology.yaml"
    path.write_text(text, encoding="utf-8")
    return path


# ------------------------------------------------------------------ exposing the cluster


@pytest.mark.parametrize("address", ["0.0.0.0", "192.168.1.5", "::"])
def test_a_non_loopback_bind_address_needs_a_decision(tmp_path: Path, address: str) -> None:
    path = write(tmp_path, f"cluster: demo\nbind_address: '{address}'\nshards:\n  - name: a\n")
    with pytest.raises(TopologyError) as refused:
        topology.load(path)
    assert str(refused.value).startswith(f"{path}:2: bind_address: ")
    assert "allow_plaintext: true" in str(refused.value)
    text = (
        f"cluster: demo\nbind_address: '{address}'\nallow_plaintext: true\nshards:\n  - name: a\n"
    )
    assert topology.load(write(tmp_path, text)).spec.allow_plaintext


@pytest.mark.parametrize("address", ["127.0.0.1", "127.0.0.2", "::1"])
def test_loopback_needs_nothing(tmp_path: Path, address: str) -> None:
    path = write(tmp_path, f"cluster: demo\nbind_address: '{address}'\nshards:\n  - name: a\n")
    assert topology.load(path).spec.bind_address == address


def test_validate_refuses_an_exposed_cluster_with_exit_2(tmp_path: Path) -> None:
    path = write(tmp_path, "cluster: demo\nbind_address: 0.0.0.0\nshards:\n  - name: a\n")
    ran = subprocess.run(
        [sys.executable, "-m", "shardctl", "validate", "-f", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert ran.returncode == 2
    assert ran.stderr.count("\n") <= 2 and f"{path}:2: bind_address" in ran.stderr
    assert "Traceback" not in ran.stderr


def test_the_three_roles_must_be_distinct(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "credentials:\n  app_user: postgres\n")
    with pytest.raises(TopologyError, match=r":5: credentials.app_user: the application role"):
        topology.load(path)


# ------------------------------------------------------------------ the app role's password


def test_the_app_password_is_generated_and_stored_with_the_others(tmp_path: Path) -> None:
    topo = topology.load(write(tmp_path, MINIMAL + "credentials:\n  secrets_file: s.json\n"))
    made = credentials.load(topo, create=True)
    assert made.app_user == "app" and made.app_password
    assert len({made.superuser_password, made.replication_password, made.app_password}) == 3
    assert credentials.load(topo) == made
    assert stat.S_IMODE(os.stat(tmp_path / "s.json").st_mode) == 0o600
    assert made.app_password not in repr(made)
    assert made.login(Login.APP) == ("app", made.app_password)
    assert made.login(Login.SUPERUSER) == ("postgres", made.superuser_password)


def test_the_app_password_from_env_or_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "app.pw").write_text("from-a-file\n", encoding="utf-8")
    text = MINIMAL + "credentials:\n  secrets_file: s.json\n  app_user: web\n"
    topo = topology.load(write(tmp_path, text + "  app_password_file: app.pw\n"))
    found = credentials.load(topo, create=True)
    assert (found.app_user, found.app_password) == ("web", "from-a-file")
    monkeypatch.setenv("APP_PW", "from-the-env")
    topo = topology.load(write(tmp_path, text + "  app_password_env: APP_PW\n"))
    assert credentials.load(topo).app_password == "from-the-env"
    monkeypatch.delenv("APP_PW")
    with pytest.raises(UsageError, match=r"credentials.app_password_env names \$APP_PW"):
        credentials.load(topo)


def test_no_app_password_yet_names_up() -> None:
    old = Credentials("postgres", "s", "replicator", "r")  # a cluster made before the app role
    with pytest.raises(UsageError, match="run `shardctl up`"):
        old.login(Login.APP)


# ------------------------------------------------------------------ what a container gets


def test_replicas_never_get_the_superuser_password(tmp_path: Path) -> None:
    topo = topology.load(write(tmp_path, MINIMAL + "    replicas: 2\n"))
    for node in topo.nodes:
        spec = container_spec(topo, node, "/var/lib/postgresql/data")
        assert spec.secrets == secret_names(node)
        assert ("superuser" in spec.secrets) == (node.role is Role.PRIMARY)
        assert "replication" in spec.secrets


def test_user_ids_from_passwd() -> None:
    passwd = "root:x:0:0::/root:/bin/sh\npostgres:x:999:998::/var/lib/postgresql:/bin/bash\n"
    assert user_ids(passwd, "postgres") == (999, 998)
    assert user_ids(passwd, "70:71") == (70, 71)
    assert user_ids(passwd, "nobody") is None


# ------------------------------------------------------------------ the bootstrap's shell parts


def _functions() -> str:
    """The bootstrap's helper functions, without the rest of the script."""
    start = BOOTSTRAP.index("pgpass_line() {")
    end = BOOTSTRAP.index("# A standby reaches")
    return BOOTSTRAP[start:end]


@given(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1))
def test_a_password_file_line_escapes_what_libpq_would_misread(password: str) -> None:
    secret = Path(f"/tmp/h10-secret-{os.getpid()}")
    secret.write_text(password, encoding="utf-8")
    try:
        line = subprocess.run(
            ["sh", "-c", _functions() + 'pgpass_line "$1" "$2"', "sh", "repl", str(secret)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        secret.unlink()
    # libpq: fields split on unescaped ':', '\' escapes the next character.
    fields, current, escaped = [], "", False
    for char in line.rstrip("\n"):
        if escaped:
            current, escaped = current + char, False
        elif char == "\\":
            escaped = True
        elif char == ":":
            fields.append(current)
            current = ""
        else:
            current += char
    fields.append(current)
    assert fields == ["*", "*", "*", "repl", password]


def test_dotted_reads_proc_net_route_addresses() -> None:
    out = subprocess.run(
        ["sh", "-c", _functions() + "dotted 0100A8C0; echo; dotted 0000FFFF"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert out == ["192.168.0.1", "255.255.0.0"]
