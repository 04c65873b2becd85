"""``tls: required`` without Docker: validation (file:line), certificates, what a node gets."""

from __future__ import annotations

import ipaddress
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from psycopg.conninfo import conninfo_to_dict

from shardctl.config import credentials, tls, topology
from shardctl.db import pg
from shardctl.docker import compose
from shardctl.docker.specs import (
    BOOTSTRAP,
    SECRETS_DIR,
    TLS_FILES,
    container_spec,
    server_settings,
    upstream_conninfo,
)
from shardctl.errors import TopologyError, UsageError

BASE = "cluster: demo\ncredentials:\n  secrets_file: secrets.json\nshards:\n  - name: a\n"


def write(folder: Path, text: str, name: str = "topology.yaml") -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def refused(folder: Path, text: str) -> str:
    with pytest.raises(TopologyError) as caught:
        topology.load(write(folder, text))
    return str(caught.value)


def own_pair(folder: Path) -> tuple[Path, Path, Path]:
    """A user's own CA, server certificate and key, as files."""
    ca = tls.make_ca("mine")
    server = tls.issue(ca, "db", ["db.example"])
    paths = (folder / "ca.pem", folder / "server.pem", folder / "server.key")
    for path, text in zip(paths, (ca.cert, server.cert, server.key), strict=True):
        path.write_text(text, encoding="utf-8")
    return paths


# ------------------------------------------------------------------ validation


@pytest.mark.parametrize("address", ["0.0.0.0", "10.1.2.3", "::"])
def test_an_exposed_bind_address_validates_with_tls_required(tmp_path: Path, address: str) -> None:
    topo = topology.load(write(tmp_path, f"bind_address: '{address}'\ntls: required\n" + BASE))
    assert topo.tls is not None and topo.tls.generated
    assert topo.sslmode == "verify-full"


def test_without_tls_the_exposure_message_offers_it(tmp_path: Path) -> None:
    message = refused(tmp_path, "bind_address: 0.0.0.0\n" + BASE)
    assert message.startswith(f"{tmp_path / 'topology.yaml'}:1: bind_address: 0.0.0.0 ")
    assert "tls: required" in message and "not supported" not in message


def test_an_engines_own_bind_address_is_an_exposure_too(tmp_path: Path) -> None:
    engines = (
        "engines:\n  b:\n    endpoint: unix:///run/b.sock\n    advertise: 10.2.0.3\n"
        "    bind_address: 10.2.0.3\n"
    )
    shards = "shards:\n  - name: a\n    engine: b\n"
    message = refused(tmp_path, "cluster: demo\n" + engines + shards)
    assert message.startswith(f"{tmp_path / 'topology.yaml'}:6: engines.b.bind_address: 10.2.0.3")
    for decision in ("tls: required\n", "allow_plaintext: true\n"):
        topology.load(write(tmp_path, "cluster: demo\n" + decision + engines + shards))


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("tls: yes\n", 1, "tls: input should be 'off' or 'required'"),
        ("tls:\n  mode: requird\n", 2, "tls.mode: input should be 'off' or 'required'"),
        ("tls:\n  cert: a.pem\n", 2, "tls.cert: unknown key 'cert'; did you mean 'cert_file'?"),
        ("tls:\n  cert_file: a.pem\n", 1, "tls: gives a certificate without its key: add key_file"),
        ("tls:\n  ca_file: a.pem\n", 2, "tls.ca_file: names a CA for your own certificate"),
        (
            "tls:\n  cert_file: none.pem\n  key_file: none.key\n",
            2,
            "tls.cert_file: the file named (relative to the topology) does not exist",
        ),
        ("tls: required\nsslmode: prefer\n", 2, "sslmode: prefer does not insist on TLS"),
        (
            "tls: required\npostgres:\n  ssl: false\n",
            3,
            "postgres.ssl: ssl is set by shardctl with tls: required",
        ),
        (
            "tls:\n  mode: 'off'\n  cert_file: a.pem\n",
            2,
            "tls.mode: is off, so its certificate files would not be used",
        ),
    ],
)
def test_tls_mistakes_name_file_and_line(
    tmp_path: Path, text: str, line: int, fragment: str
) -> None:
    message = refused(tmp_path, text + BASE)
    assert message.startswith(f"{tmp_path / 'topology.yaml'}:{line}: {fragment}"), message


def test_a_certificate_and_a_key_that_do_not_pair_are_refused(tmp_path: Path) -> None:
    _, cert, _ = own_pair(tmp_path)
    other = tls.issue(tls.make_ca("other"), "x", ["x"])
    (tmp_path / "other.key").write_text(other.key, encoding="utf-8")
    message = refused(tmp_path, "tls:\n  cert_file: server.pem\n  key_file: other.key\n" + BASE)
    assert message.startswith(f"{tmp_path / 'topology.yaml'}:1: tls: the key file does not hold")
    assert other.key not in message and cert.read_text() not in message


def test_the_cli_says_it_in_one_line_with_exit_2(tmp_path: Path) -> None:
    path = write(tmp_path, "tls:\n  cert_file: a.pem\n" + BASE)
    ran = subprocess.run(
        [sys.executable, "-m", "shardctl", "validate", "-f", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert ran.returncode == 2 and "Traceback" not in ran.stderr
    assert ran.stderr.startswith(f"error: {path}:1: tls: ")


def test_own_files_verify_the_ca_and_a_self_signed_cert_is_its_own(tmp_path: Path) -> None:
    ca, _, _ = own_pair(tmp_path)
    with_ca = "tls:\n  cert_file: server.pem\n  key_file: server.key\n  ca_file: ca.pem\n"
    topo = topology.load(write(tmp_path, with_ca + BASE))
    assert topo.tls is not None and not topo.tls.generated and topo.tls.ca == ca
    assert topo.sslmode == "verify-ca"  # the user's certificate may not name every address
    topo = topology.load(
        write(tmp_path, "tls:\n  cert_file: server.pem\n  key_file: server.key\n" + BASE)
    )
    assert topo.tls is not None and topo.tls.ca == tmp_path / "server.pem"
    explicit = "sslmode: verify-full\n" + with_ca
    assert topology.load(write(tmp_path, explicit + BASE)).sslmode == "verify-full"


def test_tls_off_changes_nothing(tmp_path: Path) -> None:
    topo = topology.load(write(tmp_path, "tls: 'off'\n" + BASE))
    assert topo.tls is None and topo.sslmode is None
    node = topo.node("a-primary")
    spec = container_spec(topo, node, "/var/lib/postgresql/data")
    assert not set(TLS_FILES) & set(spec.secrets) and "SHARDCTL_HBA_TCP" not in spec.environment
    assert not any(arg.startswith("ssl") for arg in server_settings(topo))


# ------------------------------------------------------------------ certificates and secrets


def test_the_ca_is_made_once_stored_with_the_secrets_and_never_shown(tmp_path: Path) -> None:
    topo = topology.load(write(tmp_path, "tls: required\n" + BASE))
    creds = credentials.load(topo, create=True)
    assert creds.tls_ca is not None and creds.tls_root is not None
    root = credentials.root_path(topo)
    assert creds.tls_root == root.absolute() and root.read_text() == creds.tls_ca.cert
    for path in (root, credentials.secrets_path(topo)):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = credentials.load(topo)
    assert again.tls_ca == creds.tls_ca  # made once
    assert creds.tls_ca.key not in repr(creds) and creds.tls_ca.key not in repr(creds.tls_ca)
    credentials.forget(topo)
    assert not root.exists()


def test_a_node_certificate_names_every_address_it_is_reached_on(tmp_path: Path) -> None:
    topo = topology.load(write(tmp_path, "tls: required\n" + BASE))
    creds = credentials.load(topo, create=True)
    node = topo.node("a-replica-1")
    files = creds.server_files(node)
    assert set(files) == set(TLS_FILES)
    cert = x509.load_pem_x509_certificate(files["server.crt"].encode())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(names.get_values_for_type(x509.DNSName)) >= {node.container, node.name, "localhost"}
    assert ipaddress.ip_address("127.0.0.1") in names.get_values_for_type(x509.IPAddress)
    ca = x509.load_pem_x509_certificate(files["ca.crt"].encode())
    cert.verify_directly_issued_by(ca)
    assert tls.problem(files["server.crt"].encode(), files["server.key"].encode()) is None


def test_own_files_reach_every_node_as_they_are(tmp_path: Path) -> None:
    ca, cert, key = own_pair(tmp_path)
    text = "tls:\n  cert_file: server.pem\n  key_file: server.key\n  ca_file: ca.pem\n" + BASE
    topo = topology.load(write(tmp_path, text))
    creds = credentials.load(topo, create=True)
    assert creds.tls_ca is None and creds.tls_root == ca.absolute()
    files = creds.server_files(topo.node("a-primary"))
    assert files == {
        "server.crt": cert.read_text(),
        "server.key": key.read_text(),
        "ca.crt": ca.read_text(),
    }
    assert "tls_ca_key" not in credentials.secrets_path(topo).read_text()


# ------------------------------------------------------------------ what a node gets


def test_a_node_runs_ssl_with_hostssl_and_its_files(tmp_path: Path) -> None:
    topo = topology.load(write(tmp_path, "tls: required\n" + BASE))
    settings = server_settings(topo)
    for wanted in (
        "ssl=on",
        f"ssl_cert_file={SECRETS_DIR}/server.crt",
        f"ssl_key_file={SECRETS_DIR}/server.key",
    ):
        assert wanted in settings
    for node in topo.nodes:
        spec = container_spec(topo, node, "/var/lib/postgresql/data")
        assert set(TLS_FILES) <= set(spec.secrets)
        assert ("superuser" in spec.secrets) == (node.declared_role.value == "primary")
        assert spec.environment["SHARDCTL_HBA_TCP"] == "hostssl"


def test_replicas_and_shardctl_verify_the_server(tmp_path: Path) -> None:
    topo = topology.load(write(tmp_path, "tls: required\n" + BASE))
    upstream = conninfo_to_dict(upstream_conninfo(topo, topo.node("a-replica-1")))
    assert upstream["sslmode"] == "verify-full"
    assert upstream["sslrootcert"] == f"{SECRETS_DIR}/ca.crt"
    assert upstream["host"] == "demo-a-primary"  # named in the primary's certificate
    creds = credentials.load(topo, create=True)
    mine = conninfo_to_dict(pg.conninfo(topo.node("a-primary"), creds, "app"))
    assert mine["sslmode"] == "verify-full" and mine["sslrootcert"] == str(creds.tls_root)
    assert Path(mine["sslrootcert"]).is_absolute()


def _hba(folder: Path, tcp: str | None) -> list[str]:
    """The pg_hba.conf the bootstrap writes, run on a made-up routing table."""
    start = BOOTSTRAP.index("tcp=${SHARDCTL_HBA_TCP:-host}")
    end = BOOTSTRAP.index('} > "$PGDATA/pg_hba.conf"')
    routes = (
        "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\n"
        "eth0\t00000000\t010012AC\t0003\t0\t0\t0\t00000000\n"
        "eth0\t000012AC\t00000000\t0001\t0\t0\t0\t0000FFFF\n"
    )
    script = (
        BOOTSTRAP[BOOTSTRAP.index("dotted() {") : BOOTSTRAP.index("# A standby reaches")]
        + BOOTSTRAP[start:end].replace("done < /proc/net/route", 'done < "$ROUTES"')
        + "}"
    )
    (folder / "route").write_text(routes, encoding="utf-8")
    env = {
        "ROUTES": str(folder / "route"),
        "SHARDCTL_SUPERUSER": "postgres",
        "SHARDCTL_REPLICATION_USER": "replicator",
        "SHARDCTL_APP_USER": "app",
        "SHARDCTL_DATABASE": "app",
        "PATH": "/usr/bin:/bin",
    }
    if tcp is not None:
        env["SHARDCTL_HBA_TCP"] = tcp
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True, env=env)
    return [line for line in out.stdout.splitlines() if not line.startswith("#")]


def test_with_tls_every_tcp_line_that_admits_is_hostssl(tmp_path: Path) -> None:
    assert _hba(tmp_path, "hostssl") == [
        "local all all scram-sha-256",
        "hostssl all postgres 172.18.0.1/32 scram-sha-256",
        "host all postgres all reject",
        "hostssl replication replicator 172.18.0.0 255.255.0.0 scram-sha-256",
        "hostssl app app all scram-sha-256",
    ]
    assert _hba(tmp_path, None) == [
        line.replace("hostssl", "host") for line in _hba(tmp_path, "hostssl")
    ]


def test_compose_refuses_tls_in_one_line(tmp_path: Path) -> None:
    topo = topology.load(write(tmp_path, "tls: required\n" + BASE))
    with pytest.raises(UsageError, match="compose cannot render demo with tls: required"):
        compose.render(topo)
