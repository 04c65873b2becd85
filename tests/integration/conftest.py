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
    for cluster in made:
        try:
            cluster.down(volumes=True)
        finally:
            cluster.close()


@pytest.fixture(scope="module")
def shared_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One running 2 shards x 1 replica cluster for a whole test module (read-mostly tests)."""
    with running(make_topology(tmp_path_factory.mktemp("cluster"))) as cluster:
        yield cluster
