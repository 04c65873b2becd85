"""Real clusters for integration tests: a real Docker engine, real PostgreSQL containers.

Each cluster gets its own name, ports, secrets file and temporary directory, and is removed
(volumes included) when the test or module ends, even when it fails. There is no skip when the
engine is missing: `.ci/run` installs one, and a test run without it must fail loudly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from shardctl.ops.cluster import Cluster

# The test modules import these from here; they live in tests.clusters, shared with benchmarks/.
from tests.clusters import MADE
from tests.clusters import TEST_IMAGE as TEST_IMAGE
from tests.clusters import make_topology as make_topology
from tests.clusters import run_shardctl as run_shardctl
from tests.clusters import running as running

ClusterFactory = Callable[..., Cluster]


@pytest.fixture
def cluster_factory(tmp_path: Path) -> Iterator[ClusterFactory]:
    """Make clusters inside a test; every one is brought down with its volumes afterwards."""
    made: list[Cluster] = []

    def make(shards: int = 2, replicas: int = 1, up: bool = True, **extra: object) -> Cluster:
        folder = tmp_path / f"c{len(made)}"
        folder.mkdir()
        cluster = Cluster.load(make_topology(folder, shards, replicas, **extra))
        made.append(cluster)
        if up:
            cluster.up(timeout=180)
        return cluster

    yield make
    down_all(made)


def down_all(clusters: list[Cluster]) -> None:
    """Bring every cluster down with its volumes, then raise the first failure, if any: one
    cluster that will not go must not leave the others behind."""
    failures: list[BaseException] = []
    for cluster in clusters:
        try:
            cluster.down(volumes=True)
        except BaseException as exc:  # re-raised below, after the others
            failures.append(exc)
        finally:
            cluster.close()
    if failures:
        raise failures[0]


@pytest.fixture(scope="session", autouse=True)
def nothing_left_behind() -> Iterator[None]:
    """At the end of the session, no container or volume of a cluster this session made."""
    yield
    import docker

    client = docker.from_env()
    try:
        # The list's own rows (the low-level call): the high-level one inspects each container
        # after listing, and one that another session removes in between raises NotFound.
        left = [
            f"container {c['Names'][0].lstrip('/')}"
            for c in client.api.containers(all=True, filters={"label": "shardctl.cluster"})
            if (c.get("Labels") or {}).get("shardctl.cluster") in MADE
        ] + [
            f"volume {v.name}"
            for v in client.volumes.list(filters={"label": "shardctl.cluster"})
            if (v.attrs.get("Labels") or {}).get("shardctl.cluster") in MADE
        ]
    finally:
        client.close()
    assert left == [], f"left behind by this session: {left}"


@pytest.fixture(scope="module")
def shared_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One running 2 shards x 1 replica cluster for a whole test module (read-mostly tests)."""
    with running(make_topology(tmp_path_factory.mktemp("cluster"))) as cluster:
        yield cluster
