"""`shardctl compose` renders the very containers `up` makes: compared with `docker inspect`."""

from __future__ import annotations

from pathlib import Path

import yaml

from shardctl.docker import compose
from shardctl.docker.records import LABEL_CONFIG, LABEL_SPEC
from shardctl.docker.specs import SCHEMA_TARGET
from tests.clusters import free_base_port, sdk_container
from tests.integration.conftest import ClusterFactory
from tests.integration.test_pooler import POOLER_IMAGE


def unescape(text: str) -> str:
    return text.replace("$$", "$")


def test_compose_services_match_what_up_created(
    cluster_factory: ClusterFactory, tmp_path: Path
) -> None:
    cluster = cluster_factory(shards=1, replicas=1)
    out = tmp_path / "elsewhere" / "dc.yml"
    document = yaml.safe_load(compose.render_cluster(cluster, out))
    assert document["networks"]["default"]["name"] == cluster.topology.network
    for node in cluster.topology.nodes:
        service = document["services"][node.name]
        container = sdk_container(cluster, node)
        assert container is not None
        config, host = container.attrs["Config"], container.attrs["HostConfig"]
        image = cluster.engines.client(node.placement).images.get(config["Image"])

        assert config["Image"] == service["image"]
        assert container.name == service["container_name"]
        assert config["Hostname"] == service["hostname"]
        assert config["User"] == service["user"]
        assert config["Entrypoint"] == [unescape(arg) for arg in service["entrypoint"]]
        assert config["Cmd"] == [unescape(arg) for arg in service["command"]]

        # The one deliberate difference: compose mounts the schema for the primary's first
        # start, where up applies it over SQL.
        environment = {k: unescape(v) for k, v in service["environment"].items()}
        volumes = list(service["volumes"])
        if environment.pop("SHARDCTL_SCHEMA", None) is not None:
            schema = volumes.pop()
            source, target, mode = schema.split(":")
            assert (target, mode) == (SCHEMA_TARGET, "ro")
            assert (out.parent / source).resolve() == cluster.topology.schema_path
        image_env = set(image.attrs["Config"].get("Env") or [])
        own_env = dict(e.split("=", 1) for e in config["Env"] if e not in image_env)
        assert own_env == environment

        mounts = {f"{m['Name']}:{m['Destination']}" for m in container.attrs["Mounts"]}
        assert mounts == set(volumes)

        # Two labels up derives from the spec when it creates a container: its digest (compose
        # carries it too) and the record `up --plan` compares against (compose has no use for it).
        labels = {k: v for k, v in config["Labels"].items() if k.startswith("shardctl.")}
        assert labels.pop(LABEL_CONFIG) and labels.pop(LABEL_SPEC)
        assert labels == {k: v for k, v in service["labels"].items() if k != LABEL_CONFIG}

        published = [
            f"{b['HostIp']}:{b['HostPort']}:{port.removesuffix('/tcp')}"
            for port, bindings in host["PortBindings"].items()
            for b in bindings
        ]
        assert published == service["ports"]
        assert host["RestartPolicy"]["Name"] == service["restart"]
        assert config["StopSignal"] == service["stop_signal"]
        assert cluster.topology.network in container.attrs["NetworkSettings"]["Networks"]

        # Compose writes its secrets where up copied them, readable by the server's user; the
        # superuser's, needed by initdb only, is deleted by the bootstrap once it has run
        # (compose's read-only mount of it stays).
        for secret in service["secrets"]:
            found = container.exec_run(["test", "-r", secret["target"]], user=service["user"])
            assert (found.exit_code == 0) == (secret["source"] != "superuser"), secret["target"]


def test_compose_pooler_services_match_what_up_created(
    cluster_factory: ClusterFactory, tmp_path: Path
) -> None:
    pooler = {"image": POOLER_IMAGE, "port_offset": 20}
    cluster = cluster_factory(shards=1, replicas=0, base_port=free_base_port(40), pooler=pooler)
    document = yaml.safe_load(compose.render_cluster(cluster, tmp_path / "dc.yml"))
    assert set(document["secrets"]) == {"superuser", "replication", "app", "pooler"}
    (node,) = cluster.topology.pooled_nodes()
    service = document["services"][f"{node.name}-pooler"]
    container = sdk_container(cluster, node, pooler=True)
    assert container is not None
    config = container.attrs["Config"]
    assert (config["Image"], container.name) == (service["image"], service["container_name"])
    assert config["Entrypoint"] == [unescape(arg) for arg in service["entrypoint"]]
    image = cluster.engines.client(node.placement).images.get(config["Image"])
    image_env = set(image.attrs["Config"].get("Env") or [])
    own_env = dict(e.split("=", 1) for e in config["Env"] if e not in image_env)
    assert own_env == {k: unescape(v) for k, v in service["environment"].items()}
    labels = {k: v for k, v in config["Labels"].items() if k.startswith("shardctl.")}
    assert labels.pop(LABEL_CONFIG) and labels.pop(LABEL_SPEC)
    assert labels == {k: v for k, v in service["labels"].items() if k != LABEL_CONFIG}
    # The userlist the start script wrote: the postgres user's alone, no world access.
    mode = container.exec_run(["stat", "-c", "%a %U", "/tmp/shardctl-pgbouncer/userlist.txt"])
    assert isinstance(mode.output, bytes)
    assert mode.output.decode().strip() == "600 postgres"
