"""The committed compose file is exactly what `shardctl compose` renders from topology.yaml."""

from __future__ import annotations

import yaml

from shardctl import compose, topology
from tests.conftest import REPO


def test_committed_compose_file_matches_the_topology() -> None:
    rendered = compose.render(topology.load(REPO / "topology.yaml"), REPO / "compose")
    committed = (REPO / "compose" / "docker-compose.yml").read_text(encoding="utf-8")
    assert committed == rendered, "run: shardctl compose --out compose/docker-compose.yml"


def test_compose_services_mirror_the_nodes_without_secrets() -> None:
    topo = topology.load(REPO / "topology.yaml")
    document = yaml.safe_load(compose.render(topo, REPO / "compose"))
    services = document["services"]
    assert set(services) == {n.name for n in topo.nodes}
    replica = services["shard-2-replica-1"]
    assert replica["environment"]["SHARDCTL_PRIMARY_HOST"] == "demo-shard-2-primary"
    assert replica["ports"] == ["127.0.0.1:54341:5432"]
    assert replica["depends_on"] == ["shard-2-primary"]
    assert services["shard-0-primary"]["volumes"][1] == "../schema.sql:/shardctl/schema.sql:ro"
    # Compose would interpolate a bare $; the script's variables are escaped.
    assert "$$PGDATA" in replica["entrypoint"][2]
    assert document["secrets"]["superuser"] == {"environment": "SHARDCTL_SUPERUSER_PASSWORD"}
    assert not any("PASSWORD" in key for s in services.values() for key in s["environment"])
