"""A throw-away cluster for benchmarks: a temp topology with the test image, removed after."""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from shardctl.ops.cluster import Cluster  # noqa: E402
from tests.clusters import make_topology, running  # noqa: E402  (shared with the tests)


@contextmanager
def temp_cluster(
    shards: int = 2,
    replicas: int = 1,
    ring: dict[str, object] | None = None,
    name: str | None = None,
    **more: object,
) -> Iterator[Cluster]:
    """Bring up a fresh cluster (users table, test image); bring it down with its volumes."""
    folder = Path(tempfile.mkdtemp(prefix="shardctl-bench-"))
    extra: dict[str, object] = {"ring": ring} if ring else {}
    extra.update(more)
    if name:
        extra["cluster"] = name
    path = make_topology(folder, shards, replicas, **extra)
    print(f"# bringing up {shards} shards x {replicas} replica(s)")
    try:
        with running(path) as cluster:
            yield cluster
    finally:
        shutil.rmtree(folder, ignore_errors=True)
