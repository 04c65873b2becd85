"""The topology model: the example file, defaults, and one clear error per kind of mistake."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from shardctl.config import topology
from shardctl.config.schema import IMAGE_ENV, Durability, Replication, Role
from shardctl.config.topology import Topology
from shardctl.errors import TopologyError
from tests.conftest import REPO

MINIMAL = "cluster: demo\nshards:\n  - name: a\n"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "topology.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_example_topology_is_the_documented_seed() -> None:
    topo = topology.load(REPO / "topology.yaml")
    spec = topo.spec
    assert spec.cluster == "demo"
    assert [s.name for s in spec.shards] == ["shard-0", "shard-1", "shard-2", "shard-3"]
    assert all(s.replicas == 1 for s in spec.shards)
    assert (spec.ring.algorithm.value, spec.ring.vnodes) == ("md5", 150)
    assert [(t.name, t.key) for t in spec.tables] == [("users", "id")]
    assert topo.schema_path is not None and topo.schema_path.is_file()
    assert len(topo.nodes) == 8


def test_minimal_file_gets_defaults_and_ports_per_shard(tmp_path: Path) -> None:
    topo = topology.load(write(tmp_path, MINIMAL + "    replicas: 2\n  - name: b\n"))
    assert topo.spec.image == "postgres:17"
    assert topo.spec.ring.algorithm.value == "balanced"
    ports = {n.name: n.host_port for n in topo.nodes}
    assert ports == {
        "a-primary": 54320,
        "a-replica-1": 54321,
        "a-replica-2": 54322,
        "b-primary": 54330,
        "b-replica-1": 54331,
    }
    replica = topo.node("a-replica-2")
    assert replica.role is Role.REPLICA
    assert replica.primary_container == "demo-a-primary"
    assert replica.container == "demo-a-replica-2"
    assert replica.slot == "a_replica_2"


def test_image_can_be_overridden_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(IMAGE_ENV, "local/pg:15")
    assert topology.load(write(tmp_path, MINIMAL)).spec.image == "local/pg:15"


@pytest.mark.parametrize(
    ("text", "line", "expected"),
    [
        ("", 1, "the file is empty"),
        ("cluster: [\n", 2, "not valid YAML"),
        ("- a\n- b\n", 1, "expected a mapping"),
        ("cluster: demo\nshardz: []\n", 2, "unknown key 'shardz'; did you mean 'shards'?"),
        ("cluster: demo\n", 1, "shards: this key is required"),
        ("cluster: demo\nshards: []\n", 2, "at least one shard is required"),
        (MINIMAL + "    replicas: -1\n", 4, "shards[0].replicas: input should be greater than"),
        (MINIMAL + "    replicas: two\n", 4, "shards[0].replicas: input should be a valid integer"),
        (MINIMAL + "  - name: a\n", 4, "duplicate shard name 'a' (also shards[0])"),
        ("cluster: Demo\nshards: [{name: a}]\n", 1, "'Demo' is not a valid name"),
        ("cluster: demo\ncluster: x\nshards: [{name: a}]\n", 2, "key 'cluster' appears twice"),
        ("cluster: demo\nring: {algorithm: sha1}\nshards: [{name: a}]\n", 2, "ring.algorithm"),
        ("cluster: demo\nschema: missing.sql\nshards: [{name: a}]\n", 2, "does not exist"),
        (
            "cluster: demo\nshards:\n  - name: a\n    port: 6000\n  - name: b\n    port: 6001\n",
            6,
            "port 6001 of b-primary clashes with a-replica-1",
        ),
        ("cluster: demo\nbase_port: 65530\nshards: [{name: a}, {name: b}]\n", 3, "above 65535"),
        (
            "cluster: demo\ntables: [{name: users, key: 'id; drop'}]\nshards: [{name: a}]\n",
            2,
            "not a valid SQL identifier",
        ),
    ],
)
def test_every_mistake_names_file_line_and_expectation(
    tmp_path: Path, text: str, line: int, expected: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(TopologyError) as caught:
        topology.load(path)
    message = str(caught.value)
    assert message.startswith(f"{path}:{line}: "), message
    assert expected in message
    assert len(message.splitlines()) <= 2


def test_missing_file_says_how_to_point_at_one(tmp_path: Path) -> None:
    with pytest.raises(TopologyError, match="no such topology file"):
        topology.load(tmp_path / "nope.yaml")


def test_cli_reports_an_invalid_topology_in_one_line_with_exit_2(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "    replicas: -1\n")
    result = subprocess.run(
        [sys.executable, "-m", "shardctl", "validate", "-f", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: {path}:4: shards[0].replicas: input should be greater than or equal to 0 (got -1)"
    ]


def test_cli_up_with_an_invalid_topology_touches_nothing(tmp_path: Path) -> None:
    path = write(tmp_path, "cluster: demo\nshards: [{name: a, replicas: 99}]\n")
    env_free = {"PATH": "/usr/bin:/bin", "DOCKER_HOST": "unix:///nonexistent.sock"}
    result = subprocess.run(
        [sys.executable, "-m", "shardctl", "up", "-f", str(path)],
        capture_output=True,
        text=True,
        check=False,
        env=env_free,
    )
    # Exit 2 (topology), not 3 (Docker): validation happens before anything is contacted.
    assert result.returncode == 2, result.stderr
    assert "replicas" in result.stderr


def test_json_schema_is_exported_and_committed() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "shardctl", "schema"], capture_output=True, text=True, check=True
    )
    assert '"shards"' in result.stdout
    assert (REPO / "docs" / "topology.schema.json").read_text(encoding="utf-8") == result.stdout


def test_replication_durability_spellings_and_their_misuse(tmp_path: Path) -> None:
    def load(replication: str) -> Topology:
        path = tmp_path / "topology.yaml"
        path.write_text(
            f"cluster: demo\nreplication: {replication}\nshards:\n  - name: s0\n"
            "  - name: s1\n    replication: {mode: sync, durability: preferred}\n",
            encoding="utf-8",
        )
        return topology.load(path)

    plain = load("sync")
    assert (plain.replication("s0"), plain.replication_spec("s0").durability) == (
        Replication.SYNC,
        Durability.REQUIRED,
    )
    assert plain.replication_spec("s1").durability is Durability.PREFERRED
    spelled = load("{mode: sync, durability: preferred, degrade_after: 2.5}")
    assert spelled.replication_spec("s0").degrade_after == 2.5
    assert load("async").replication("s0") is Replication.ASYNC
    for bad, message in (
        ("{mode: async, durability: preferred}", "replication.durability: durability applies"),
        ("{mode: sync, durability: maybe}", "replication.durability: input should be"),
        ("{durability: preferred}", "replication.mode: this key is required"),
        ("{mode: sync, degrade_after: .inf}", "replication.degrade_after"),
    ):
        with pytest.raises(TopologyError) as raised:
            load(bad)
        assert message in str(raised.value), str(raised.value)


def test_failover_is_manual_by_default_and_a_shard_overrides_the_cluster(tmp_path: Path) -> None:
    from shardctl.config.schema import FailoverMode

    plain = topology.load(write(tmp_path, MINIMAL))
    assert plain.failover("a").mode is FailoverMode.MANUAL
    assert plain.failover("a").detect_seconds == 5
    text = (
        "cluster: demo\nfailover: {mode: automatic, detect_seconds: 3}\n"
        "shards:\n  - name: a\n  - name: b\n    failover: {mode: manual}\n"
    )
    both = topology.load(write(tmp_path, text))
    assert both.failover("a").mode is FailoverMode.AUTOMATIC
    assert both.failover("a").detect_seconds == 3
    assert both.failover("b").mode is FailoverMode.MANUAL


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("{mode: sometimes}", "failover.mode"),
        ("{mode: automatic, detect_seconds: 0}", "failover.detect_seconds"),
        ("{mode: automatic, detect_seconds: .inf}", "failover.detect_seconds"),
        ("{hold_down_seconds: -1}", "failover.hold_down_seconds"),
        ("{mode: automatic, detect: 5}", "unknown key 'detect'"),
    ],
)
def test_a_bad_failover_policy_names_its_line(tmp_path: Path, value: str, expected: str) -> None:
    path = write(tmp_path, f"cluster: demo\nfailover: {value}\nshards: [{{name: a}}]\n")
    with pytest.raises(TopologyError) as caught:
        topology.load(path)
    assert str(caught.value).startswith(f"{path}:2: ")
    assert expected in str(caught.value)
