"""Several Docker hosts: the engines section, per-node placement, addresses and clients."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg.conninfo import conninfo_to_dict

from shardctl.config import addresses, topology
from shardctl.config.credentials import Credentials
from shardctl.config.topology import Topology
from shardctl.db import pg
from shardctl.docker import compose
from shardctl.docker.clients import tls_config
from shardctl.docker.specs import container_spec, upstream_conninfo
from shardctl.errors import ProvisioningError, TopologyError, UsageError

TWO_HOSTS = """\
cluster: demo
spread: hosts
engines:
  a:
    endpoint: unix:///run/a.sock
    advertise: 10.213.7.2
  b:
    endpoint: unix:///run/b.sock
    advertise: 10.213.7.3
    bind_address: 10.213.7.3
shards:
  - name: s0
    engine: a
    replica_engines: [b]
  - name: s1
    engine: b
    replica_engines: [a]
allow_plaintext: true
"""


def load(tmp_path: Path, text: str) -> Topology:
    path = tmp_path / "topology.yaml"
    path.write_text(text, encoding="utf-8")
    return topology.load(path)


def error(tmp_path: Path, text: str) -> str:
    with pytest.raises(TopologyError) as caught:
        load(tmp_path, text)
    return str(caught.value)


def test_nodes_are_placed_and_reached_through_their_engine(tmp_path: Path) -> None:
    topo = load(tmp_path, TWO_HOSTS)
    placed = {
        n.name: (
            n.placement.name,
            n.placement.endpoint,
            addresses.address(n),
            n.placement.bind_address,
        )
        for n in topo.nodes
    }
    assert placed == {
        "s0-primary": ("a", "unix:///run/a.sock", ("10.213.7.2", 54320), "0.0.0.0"),
        "s0-replica-1": ("b", "unix:///run/b.sock", ("10.213.7.3", 54321), "10.213.7.3"),
        "s1-primary": ("b", "unix:///run/b.sock", ("10.213.7.3", 54330), "10.213.7.3"),
        "s1-replica-1": ("a", "unix:///run/a.sock", ("10.213.7.2", 54331), "0.0.0.0"),
    }
    assert [p.name for p in topo.placements()] == ["a", "b"]


def test_a_replica_on_another_host_streams_from_the_advertised_address(tmp_path: Path) -> None:
    topo = load(tmp_path, TWO_HOSTS)
    info = conninfo_to_dict(upstream_conninfo(topo, topo.node("s0-replica-1")))
    assert (info["host"], info["port"]) == ("10.213.7.2", "54320")
    assert info["user"] == "replicator" and "password" not in info
    spec = container_spec(topo, topo.node("s0-replica-1"), "/var/lib/postgresql")
    assert spec.environment["SHARDCTL_PRIMARY_CONNINFO"] == upstream_conninfo(
        topo, topo.node("s0-replica-1")
    )
    assert [(p.host_ip, p.host_port) for p in spec.ports] == [("10.213.7.3", 54321)]


def test_on_one_engine_a_replica_streams_from_the_container(tmp_path: Path) -> None:
    topo = load(tmp_path, "cluster: demo\nshards:\n  - name: s0\n")
    info = conninfo_to_dict(upstream_conninfo(topo, topo.node("s0-replica-1")))
    assert (info["host"], info["port"]) == ("demo-s0-primary", "5432")
    assert addresses.address(topo.node("s0-primary")) == ("127.0.0.1", 54320)
    assert topo.node("s0-primary").placement.name == "local"


def test_after_a_failover_the_upstream_follows_the_acting_primary(tmp_path: Path) -> None:
    topo = load(tmp_path, TWO_HOSTS).with_acting({"s1": "s1-replica-1"})
    old = topo.node("s1-primary")  # on b, now a replica of s1-replica-1 on a
    info = conninfo_to_dict(upstream_conninfo(topo, old))
    assert (info["host"], info["port"]) == ("10.213.7.2", "54331")


def test_an_endpoint_in_place_of_a_name_still_works(tmp_path: Path) -> None:
    topo = load(tmp_path, "cluster: demo\nshards:\n  - name: s0\n    engine: ssh://db-1\n")
    node = topo.node("s0-primary")
    assert (node.placement.endpoint, addresses.address(node), node.placement.bind_address) == (
        "ssh://db-1",
        ("db-1", 54320),
        "0.0.0.0",
    )


def test_sslmode_reaches_every_connection(tmp_path: Path) -> None:
    topo = load(tmp_path, TWO_HOSTS.replace("spread: hosts\n", "spread: hosts\nsslmode: require\n"))
    creds = Credentials("postgres", "pw", "replicator", "rpw")
    assert conninfo_to_dict(pg.conninfo(topo.node("s0-primary"), creds, "app"))["sslmode"] == (
        "require"
    )
    upstream = conninfo_to_dict(upstream_conninfo(topo, topo.node("s0-replica-1")))
    assert upstream["sslmode"] == "require"


@pytest.mark.parametrize(
    ("edit", "line", "expected"),
    [
        (("engine: a\n", "engine: c\n"), 13, "shards[0].engine: unknown engine 'c'"),
        (("[b]\n  - name: s1", "[x]\n  - name: s1"), 14, "unknown engine 'x'"),
        (
            ("unix:///run/b.sock", "unix:///run/a.sock"),
            8,
            "engines.b.endpoint: endpoint 'unix:///run/a.sock' is also engine 'a'",
        ),
        (("[b]\n  - name: s1", "[a]\n  - name: s1"), 14, "s0-replica-1 is on engine 'a'"),
        (("[b]\n", "[b, a]\n"), 14, "2 engines listed for 1 replica(s)"),
        (("endpoint: unix:///run/a.sock", "endpoint: /run/a.sock"), 5, "engines.a.endpoint"),
    ],
)
def test_engine_mistakes_name_file_and_line(
    tmp_path: Path, edit: tuple[str, str], line: int, expected: str
) -> None:
    message = error(tmp_path, TWO_HOSTS.replace(*edit, 1))
    assert message.startswith(f"{tmp_path / 'topology.yaml'}:{line}: "), message
    assert expected in message


def test_one_host_spelled_twice_is_one_host(tmp_path: Path) -> None:
    text = """\
cluster: demo
engines:
  a: {endpoint: "tcp://DB-1.example:2376"}
  b: {endpoint: "tcp://db-1.example:2376"}
  c: {endpoint: "ssh://root@db-1.EXAMPLE", advertise: db-1.example}
shards:
  - {name: s0, engine: a, replicas: 0}
  - {name: s1, engine: c, replicas: 0, port: 54320}
"""
    message = error(tmp_path, text)
    assert ":4: engines.b.endpoint: endpoint 'tcp://db-1.example:2376' is also engine 'a'" in (
        message
    )
    message = error(tmp_path, text.replace('  b: {endpoint: "tcp://db-1.example:2376"}\n', ""))
    assert ":7: shards[1].port: port 54320 of s1-primary clashes with s0-primary" in message


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.sampled_from("ab"), min_size=1, max_size=2), min_size=1, max_size=3))
def test_spread_hosts_never_accepts_a_replica_beside_its_primary(
    tmp_path_factory: pytest.TempPathFactory, placement: list[list[str]]
) -> None:
    """Whatever the placement, a topology that validates under ``spread: hosts`` has no
    replica on its primary's engine, and replicas off-engine always stream over the network."""
    lines = ["cluster: demo", "spread: hosts", "engines:"]
    lines += ["  a: {endpoint: 'unix:///a', advertise: 10.0.0.1}"]
    lines += ["  b: {endpoint: 'unix:///b', advertise: 10.0.0.2}", "shards:"]
    for i, (primary, *replicas) in enumerate(placement):
        lines.append(f"  - {{name: s{i}, engine: {primary}, replicas: {len(replicas)}, ")
        lines[-1] += f"replica_engines: [{', '.join(replicas)}]}}"
    text = "\n".join(lines) + "\n"
    folder = tmp_path_factory.mktemp("spread")
    clash = any(primary in replicas for primary, *replicas in placement)
    if clash:
        assert "spread: hosts" in error(folder, text)
        return
    topo = load(folder, text)
    for node in topo.nodes:
        if node.index > 0:
            upstream = topo.node(node.primary_name)
            assert node.placement.name != upstream.placement.name
            assert addresses.upstream_address(topo, node) == addresses.address(upstream)


def test_tls_engines_get_the_sdk_tls_settings(tmp_path: Path) -> None:
    """Checked on the settings, not a client: the SDK's client asks the engine its version as
    it is made, and this test contacts nothing."""
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (tmp_path / name).write_text("not read before connecting\n", encoding="utf-8")
    text = """\
cluster: demo
engines:
  a:
    endpoint: tcp://db-1.example:2376
    tls: {ca: ca.pem, cert: cert.pem, key: key.pem}
  b:
    endpoint: tcp://db-2.example:2376
    tls: {verify: false, cert: cert.pem, key: key.pem}
shards:
  - {name: s0, engine: a, replica_engines: [b]}
"""
    topo = load(tmp_path, text)
    a, b = (topo.node(n).placement for n in ("s0-primary", "s0-replica-1"))
    assert a is not None and a.tls is not None and b is not None and b.tls is not None
    verified = tls_config(a.tls)
    assert verified.cert == (str(tmp_path / "cert.pem"), str(tmp_path / "key.pem"))
    assert (verified.ca_cert, verified.verify) == (
        str(tmp_path / "ca.pem"),
        str(tmp_path / "ca.pem"),
    )
    assert tls_config(b.tls).verify is False
    assert addresses.address(topo.node("s0-primary")) == ("db-1.example", 54320)
    missing = dataclasses.replace(a.tls, ca=tmp_path / "nowhere.pem")
    with pytest.raises(ProvisioningError, match=r"nowhere\.pem does not exist"):
        tls_config(missing)


def test_compose_refuses_a_cluster_on_several_engines(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="engines a, b: use `shardctl up`"):
        compose.render(load(tmp_path, TWO_HOSTS))


@pytest.mark.parametrize(
    ("engines", "other_hosts"),
    [
        ("", False),  # this machine's engine: shardctl arrives from the network's gateway
        ("engines:\n  a: {endpoint: unix:///run/a.sock}\n", False),
        ("engines:\n  a: {endpoint: tcp://db-1.example:2376}\n", True),  # by NAT, from afar
        ("engines:\n  a: {endpoint: ssh://admin@db-1.example}\n", True),
    ],
)
def test_a_single_engine_on_another_host_admits_shardctl_by_its_address(
    tmp_path: Path, engines: str, other_hosts: bool
) -> None:
    placed = "    engine: a\n" if engines else ""
    text = f"cluster: demo\n{engines}shards:\n  - name: s0\n{placed}allow_plaintext: true\n"
    topo = load(tmp_path, text)
    spec = container_spec(topo, topo.node("s0-primary"), "/var/lib/postgresql")
    assert ("SHARDCTL_OTHER_HOSTS" in spec.environment) is other_hosts
