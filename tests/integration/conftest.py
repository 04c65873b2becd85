"""Real clusters for integration tests: a real Docker engine, real PostgreSQL containers.

Each cluster gets its own name, ports, secrets file and temporary directory, and is removed
(volumes included) when the test or module ends, even when it fails. There is no skip when the
engine is missing: `.ci/run` installs one, and a test run without it must fail loudly.
"""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from shardctl.cluster import Cluster
from tests.conftest import REPO

TEST_IMAGE = os.environ.get("SHARDCTL_TEST_IMAGE", "shardctl-test/postgres:15")
_counter = itertools.count()


def _free_base_port(span: int) -> int:
    """A base port with ``span`` free ports above it, distinct per test and xdist worker."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or "0"
    for _ in range(200):
        base = 20000 + ((os.getpid() * 7 + int(worker) * 3000 + next(_counter) * span) % 30000)
        if all(_port_free(base + i) for i in range(span)):
            return base
    raise RuntimeError("no free port range found")


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


ClusterFactory = Callable[..., Cluster]


def make_topology(directory: Path, shards: int = 2, replicas: int = 1, **extra: object) -> Path:
    """Write a small test topology (users table, test image, unique name and ports)."""
    name = f"t{uuid.uuid4().hex[:8]}"
    shutil.copy(REPO / "schema.sql", directory / "schema.sql")
    data: dict[str, object] = {
        "cluster": name,
        "image": TEST_IMAGE,
        "base_port": _free_base_port(shards * 10 + 10),
        "schema": "schema.sql",
        "tables": [{"name": "users", "key": "id"}],
        "credentials": {"secrets_file": "secrets.json"},
        "shards": [{"name": f"shard-{i}", "replicas": replicas} for i in range(shards)],
    }
    data.update(extra)
    path = directory / "topology.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


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


@contextmanager
def running(path: Path) -> Iterator[Cluster]:
    """The cluster of ``path``, up; brought down with its volumes afterwards, even on failure."""
    cluster = Cluster.load(path)
    try:
        cluster.up(timeout=180)
        yield cluster
    finally:
        try:
            cluster.down(volumes=True)
        finally:
            cluster.close()


def run_shardctl(
    *args: str | Path, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a subprocess (exit codes, stderr and all), as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "shardctl", *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
