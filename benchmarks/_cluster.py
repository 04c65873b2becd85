"""A throw-away cluster for benchmarks: a temp topology with the test image, removed after."""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from shardctl.cluster import Cluster  # noqa: E402

IMAGE = os.environ.get("SHARDCTL_TEST_IMAGE", "shardctl-test/postgres:15")


def _free_base(span: int) -> int:
    for base in range(41000, 60000, 100):
        if all(_free(base + i) for i in range(span)):
            return base
    raise RuntimeError("no free port range")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@contextmanager
def temp_cluster(
    shards: int = 2, replicas: int = 1, ring: dict[str, object] | None = None
) -> Iterator[Cluster]:
    """Bring up a fresh cluster (users table, test image); bring it down with its volumes."""
    folder = Path(tempfile.mkdtemp(prefix="shardctl-bench-"))
    shutil.copy(REPO / "schema.sql", folder / "schema.sql")
    spec: dict[str, object] = {
        "cluster": f"b{uuid.uuid4().hex[:8]}",
        "image": IMAGE,
        "base_port": _free_base(shards * 10 + 10),
        "schema": "schema.sql",
        "tables": [{"name": "users", "key": "id"}],
        "credentials": {"secrets_file": "secrets.json"},
        "shards": [{"name": f"shard-{i}", "replicas": replicas} for i in range(shards)],
    }
    if ring is not None:
        spec["ring"] = ring
    path = folder / "topology.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    cluster = Cluster.load(path)
    try:
        print(f"# bringing up {shards} shards x {replicas} replica(s) ({spec['cluster']})")
        cluster.up(timeout=180)
        yield cluster
    finally:
        try:
            cluster.down(volumes=True)
        finally:
            cluster.close()
            shutil.rmtree(folder, ignore_errors=True)
