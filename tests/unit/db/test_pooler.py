"""The pooler section: ports, overrides and clashes; its container; its checks; the Router's
choice of connection target. No Docker here (tests/integration/test_pooler.py runs them)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from shardctl.config import addresses
from shardctl.config.addresses import address
from shardctl.config.credentials import Credentials
from shardctl.config.schema import DEFAULT_POOLER_IMAGE, Role
from shardctl.config.topology import Topology, parse
from shardctl.db.poolers import PoolerFacts, PoolerObservation
from shardctl.docker import compose
from shardctl.docker.specs import POOLER_BOOTSTRAP, pooler_spec
from shardctl.errors import TopologyError, UsageError
from shardctl.health.checks import POOLER, POOLER_WAITING, pooler_checks
from shardctl.router.router import Router, default_via

BASE = "cluster: demo\nshards:\n  - name: a\n    replicas: 2\n  - name: b\n"


def topo(extra: str = "pooler: {}\n", shards: str = BASE) -> Topology:
    return parse(extra + shards, Path("topology.yaml"))


def test_no_pooler_section_means_no_poolers() -> None:
    plain = topo("")
    assert plain.pooled_nodes() == ()
    assert all(node.pooler_port is None for node in plain.nodes)
    assert default_via(plain) == "direct"


def test_every_node_gets_a_pooler_on_its_port_plus_the_offset() -> None:
    pooled = topo()
    ports = {n.name: (n.host_port, n.pooler_port) for n in pooled.nodes}
    assert ports == {
        "a-primary": (54320, 55320),
        "a-replica-1": (54321, 55321),
        "a-replica-2": (54322, 55322),
        "b-primary": (54330, 55330),
        "b-replica-1": (54331, 55331),
    }
    node = pooled.node("a-replica-1")
    assert node.pooler_container == "demo-a-replica-1-pooler"
    assert address(node, "pooler") == ("127.0.0.1", 55321)
    assert address(node) == ("127.0.0.1", 54321)
    assert addresses.pooler_target(node) == ("demo-a-replica-1", 5432)


def test_replicas_false_and_a_shard_override() -> None:
    shards = BASE + "    pooler: {enabled: false}\n"
    pooled = topo("pooler: {replicas: false, port_offset: 100}\n", shards)
    assert [n.name for n in pooled.pooled_nodes()] == ["a-primary"]
    assert pooled.node("a-primary").pooler_port == 54420
    assert pooled.pooler("b") is None
    with pytest.raises(UsageError, match="has no pooler"):
        address(pooled.node("a-replica-1"), "pooler")


def test_a_pooler_port_clashing_with_a_node_is_refused() -> None:
    shards = "shards:\n  - name: a\n  - name: b\n    port: 54330\n"
    with pytest.raises(TopologyError, match="port 54330 of b-primary clashes with the pooler"):
        topo("cluster: demo\npooler: {port_offset: 10}\n", shards)


def test_a_pooler_port_above_65535_is_refused() -> None:
    with pytest.raises(TopologyError, match="of the pooler of a-primary is above 65535"):
        topo("pooler: {port_offset: 20000}\nbase_port: 50000\n")


def test_tls_to_the_servers_is_refused_with_poolers() -> None:
    with pytest.raises(TopologyError, match="cannot be kept through the poolers"):
        topo("pooler: {}\nsslmode: require\n")
    assert topo("sslmode: require\n").pooled_nodes() == ()


@given(offset=st.integers(1, 2000), shards=st.integers(1, 30))
def test_valid_topologies_never_publish_two_things_on_one_port(offset: int, shards: int) -> None:
    text = "cluster: demo\nbase_port: 20000\nshards:\n" + "".join(
        f"  - name: s{i}\n    replicas: 2\n" for i in range(shards)
    )
    try:
        pooled = topo(f"pooler: {{port_offset: {offset}}}\n", text)
    except TopologyError as exc:
        assert "clashes" in str(exc)
        return
    published = [n.host_port for n in pooled.nodes] + [
        n.pooler_port for n in pooled.nodes if n.pooler_port is not None
    ]
    assert len(published) == len(set(published))


def test_the_pooler_container_holds_no_password_and_points_at_its_node() -> None:
    pooled = topo("pooler: {mode: session, pool_size: 7, image: local/pgbouncer:1}\n")
    spec = pooler_spec(pooled, pooled.node("b-primary"))
    assert spec.image == "local/pgbouncer:1"
    assert spec.secrets == ("app", "pooler")
    assert spec.user == "postgres"
    assert spec.environment["SHARDCTL_TARGET_HOST"] == "demo-b-primary"
    assert spec.environment["SHARDCTL_POOL_MODE"] == "session"
    assert spec.environment["SHARDCTL_POOL_SIZE"] == "7"
    assert not any("PASSWORD" in key for key in spec.environment)
    assert [(p.host_ip, p.host_port, p.container_port) for p in spec.ports] == [
        ("127.0.0.1", 55330, 6432)
    ]
    assert spec.labels["shardctl.pooler"] == "b-primary" and "shardctl.node" not in spec.labels
    assert "umask 077" in POOLER_BOOTSTRAP and "$SHARDCTL_SECRETS/app" in POOLER_BOOTSTRAP


def test_the_pooler_image_is_the_declared_one_else_the_environments_else_the_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SHARDCTL_POOLER_IMAGE", raising=False)
    assert topo().pooler_image("a") == DEFAULT_POOLER_IMAGE
    monkeypatch.setenv("SHARDCTL_POOLER_IMAGE", "shardctl-test/pgbouncer:1")
    assert topo().pooler_image("a") == "shardctl-test/pgbouncer:1"
    declared = topo("pooler: {image: local/pgbouncer:1}\n")
    assert declared.pooler_image("a") == "local/pgbouncer:1"  # the file wins


def test_compose_renders_a_service_per_pooler_and_only_the_secrets_used() -> None:
    document = yaml.safe_load(compose.render(topo(), Path("compose.yml")))
    assert "a-replica-2-pooler" in document["services"]
    assert document["services"]["a-primary-pooler"]["depends_on"] == ["a-primary"]
    assert set(document["secrets"]) == {"superuser", "replication", "app", "pooler"}
    plain = yaml.safe_load(compose.render(topo(""), Path("compose.yml")))
    assert set(plain["secrets"]) == {"superuser", "replication"}


CREDS = Credentials("postgres", "x", "replicator", "y", "app", "z", "w")


def test_a_router_via_pooler_needs_poolers_and_defaults_to_the_topology() -> None:
    with pytest.raises(UsageError, match="declares no pooler"):
        Router(topo(""), CREDS, via="pooler")
    assert default_via(topo("pooler: {router: true}\n")) == "pooler"
    router = Router(topo("pooler: {router: true}\n"), CREDS)
    try:
        assert router.via == "pooler"
    finally:
        router.close()


def facts(**changes: object) -> PoolerFacts:
    values: dict[str, object] = {
        "host": "demo-a-primary",
        "port": 5432,
        "pool_mode": "transaction",
        "clients_active": 1,
        "clients_waiting": 0,
        "servers_active": 1,
        "servers_idle": 2,
        "max_wait_seconds": 0.0,
        "server_in_recovery": False,
    } | changes
    return PoolerFacts(**values)  # type: ignore[arg-type]


def judged(
    found: PoolerFacts | None, *, error: str | None = None, node: str = "a-primary"
) -> dict[str, str]:
    pooled = topo()
    obs = PoolerObservation(pooled.node(node), "running", found, error)
    return {c.check: c.result + " " + c.detail for c in pooler_checks(obs, pooled.pooler("a"))}


def test_a_healthy_pooler_passes() -> None:
    results = judged(facts())
    assert results[POOLER].startswith("pass pooler demo-a-primary-pooler (transaction)")
    assert results[POOLER_WAITING].startswith("pass")


def test_a_pooler_that_does_not_answer_fails_naming_its_container() -> None:
    results = judged(None, error="container exited")
    assert results[POOLER] == "fail pooler demo-a-primary-pooler: container exited"
    assert results[POOLER_WAITING].startswith("skip")


def test_a_pooler_pointing_elsewhere_or_at_the_wrong_role_fails() -> None:
    assert "not its node" in judged(facts(host="demo-b-primary"))[POOLER]
    wrong = judged(facts(server_in_recovery=True))[POOLER]
    assert wrong.startswith("fail") and "acting primary" in wrong
    replica = judged(facts(host="demo-a-replica-1", server_in_recovery=True), node="a-replica-1")
    assert replica[POOLER].startswith("pass")
    assert judged(facts(server_in_recovery=None, server_error="x"))[POOLER].startswith("fail")


def test_waiting_clients_past_the_threshold_fail() -> None:
    assert judged(facts(clients_waiting=3))[POOLER_WAITING].startswith("fail 3 client(s)")


def test_roles_follow_the_catalog_but_each_pooler_stays_with_its_node() -> None:
    moved = topo().with_acting({"a": "a-replica-1"})
    node = moved.node("a-replica-1")
    assert node.role is Role.PRIMARY
    assert pooler_spec(moved, node).environment["SHARDCTL_TARGET_HOST"] == "demo-a-replica-1"
    assert pooler_spec(moved, node) == pooler_spec(topo(), topo().node("a-replica-1"))
