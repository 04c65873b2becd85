"""The committed compose file is exactly what `shardctl compose` renders from topology.yaml, and
every service is the container `up` makes."""

from __future__ import annotations

from pathlib import Path

import yaml

from shardctl.config import topology
from shardctl.docker import compose
from shardctl.docker.records import LABEL_CONFIG, config_digest
from shardctl.docker.specs import SCHEMA_TARGET, container_spec
from tests.conftest import REPO

COMMITTED = REPO / "compose" / "docker-compose.yml"


def test_committed_compose_file_matches_the_topology() -> None:
    rendered = compose.render(topology.load(REPO / "topology.yaml"), COMMITTED)
    committed = COMMITTED.read_text(encoding="utf-8")
    assert committed == rendered, "run: shardctl compose --out compose/docker-compose.yml"


def test_compose_services_mirror_the_nodes_without_secrets() -> None:
    topo = topology.load(REPO / "topology.yaml")
    document = yaml.safe_load(compose.render(topo, COMMITTED))
    services = document["services"]
    assert set(services) == {n.name for n in topo.nodes}
    replica = services["shard-2-replica-1"]
    assert "host=demo-shard-2-primary " in replica["environment"]["SHARDCTL_PRIMARY_CONNINFO"]
    assert replica["ports"] == ["127.0.0.1:54341:5432"]
    assert replica["depends_on"] == ["shard-2-primary"]
    assert services["shard-0-primary"]["volumes"][1] == "../schema.sql:/shardctl/schema.sql:ro"
    # Compose would interpolate a bare $; the script's variables are escaped.
    assert "$$PGDATA" in replica["entrypoint"][2]
    assert document["secrets"]["superuser"] == {"environment": "SHARDCTL_SUPERUSER_PASSWORD"}
    assert not any("PASSWORD" in key for s in services.values() for key in s["environment"])


def test_each_service_is_the_container_up_makes(tmp_path: Path) -> None:
    topo = topology.load(REPO / "topology.yaml")
    mount = "/var/lib/postgresql"
    services = yaml.safe_load(compose.render(topo, tmp_path / "dc.yml", mount=mount))["services"]
    for node in topo.nodes:
        spec = container_spec(topo, node, mount)
        service = services[node.name]
        assert service["image"] == spec.image
        assert service["container_name"] == spec.name
        assert service["user"] == spec.user
        assert service["command"] == list(spec.command)
        assert service["entrypoint"][2].replace("$$", "$") == spec.entrypoint[2]
        extra = {"SHARDCTL_SCHEMA": SCHEMA_TARGET} if node.name.endswith("primary") else {}
        assert (
            service["environment"]
            == {k: v.replace("$", "$$") for k, v in spec.environment.items()} | extra
        )
        assert service["volumes"][0] == f"{node.volume}:{mount}"
        assert [s["target"] for s in service["secrets"]] == [
            f"{spec.secrets_dir}/{name}" for name in spec.secrets
        ]
        assert service["labels"] == dict(spec.labels) | {LABEL_CONFIG: "compose"}


def test_the_schema_path_is_relative_to_the_written_file(tmp_path: Path) -> None:
    topo = topology.load(REPO / "topology.yaml")
    for out in (tmp_path / "dc.yml", tmp_path / "a" / "b" / "dc.yml", REPO / "dc.yml"):
        services = yaml.safe_load(compose.render(topo, out))["services"]
        source = services["shard-0-primary"]["volumes"][1].split(":")[0]
        assert source.startswith((".", "/")), "compose reads a bare name as a volume"
        assert (out.parent / source).resolve() == (REPO / "schema.sql").resolve()


def test_an_unchanged_configuration_keeps_its_digest(tmp_path: Path) -> None:
    # Containers carry these digests; a different one makes `up` recreate every node. (The
    # bootstrap of the switchover/failover release changed them once, on purpose, and the
    # least-privilege one (pg_hba at every start, no password on a command line) again, and
    # tls: required's hostssl lines once more.)
    path = tmp_path / "topology.yaml"
    path.write_text(
        "cluster: pinned\nimage: postgres:17\ndatabase: app\nbase_port: 54320\n"
        "shards:\n  - name: shard-0\n    replicas: 1\n",
        encoding="utf-8",
    )
    topo = topology.load(path)
    digests = {
        node.name: config_digest(container_spec(topo, node, "/var/lib/postgresql/data"))
        for node in topo.nodes
    }
    assert digests == {
        "shard-0-primary": "7fbc03ca21bb2d04",
        "shard-0-replica-1": "a8fff41f61c00e20",
    }
    # A switchover swaps the roles; neither running container may be recreated for it.
    switched = topo.with_acting({"shard-0": "shard-0-replica-1"})
    assert {
        node.name: config_digest(container_spec(switched, node, "/var/lib/postgresql/data"))
        for node in switched.nodes
    } == digests
