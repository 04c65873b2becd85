"""The backup repository on another host's engine, reached over ``tcp://``.

Two simulated hosts (scripts/second-host.sh: engines in their own network namespaces): host b
runs both shards' primaries and holds the repository, host a shard-0's one replica (the base
backup copies it from there, shard-1's from its primary). Host b's engine is declared by a
``tcp://`` endpoint (a forwarder on loopback to its socket), so shardctl treats it as another
host: it never opens the repository folder itself, and reads and writes it through that engine
(the backup node, or a helper container after ``down --volumes``). Under ledgered Router
writes: ``backup``, ``backup --point p1``, ``backups`` (complete, with a WAL range and age),
``verify-replication`` and ``status`` (archiving healthy, the newest WAL's time read there);
then ``down --volumes`` and ``restore --to p1``: every write acknowledged before the point is
there, none started after it returned; then a second backup, and the retention (one base
backup kept) removes the first and its WAL.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from shardctl.docker.backup_specs import LABEL_BACKUP
from shardctl.docker.clients import make_client
from shardctl.ops.backup.repository import Repository
from shardctl.ops.cluster import Cluster
from tests.clusters import Host, make_topology, run_shardctl, simulated_hosts
from tests.integration.test_backup import _healthy, _point_under_traffic
from tests.traffic import preload, traffic

pytestmark = pytest.mark.integration


def _pump(source: socket.socket, target: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            target.sendall(data)
    with contextlib.suppress(OSError):
        target.shutdown(socket.SHUT_WR)


@contextlib.contextmanager
def tcp_engine(unix_socket: str) -> Iterator[str]:
    """A ``tcp://127.0.0.1:PORT`` endpoint forwarding every connection to ``unix_socket``."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except OSError:
                return
            engine = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                engine.connect(unix_socket)
            except OSError:
                client.close()
                continue
            for a, b in ((client, engine), (engine, client)):
                threading.Thread(target=_pump, args=(a, b), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"tcp://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        listener.close()


@pytest.fixture
def remote(tmp_path: Path) -> Iterator[tuple[Cluster, Host]]:
    """Two shards with their primaries on simulated host b, reached over tcp://, which holds
    the repository; shard-0's replica on host a."""
    with simulated_hosts(2) as (a, host), tcp_engine(host.endpoint.removeprefix("unix://")) as url:
        path = make_topology(tmp_path, 2, 0)
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        data["engines"] = {"a": a.engine(), "b": {**host.engine(), "endpoint": url}}
        data["allow_plaintext"] = True  # published on the hosts' addresses, beyond loopback
        data["spread"] = "hosts"
        data["shards"] = [
            {"name": "shard-0", "engine": "b", "replicas": 1, "replica_engines": ["a"]},
            {"name": "shard-1", "engine": "b", "replicas": 0},
        ]
        # An absolute path on the host: the simulated host shares this machine's disk, but
        # shardctl, given a tcp:// engine, must not rely on it.
        data["backup"] = {
            "repository": str(tmp_path / "far-repository"),
            "engine": "b",
            "retention": {"base_backups": 1},
        }
        path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        cluster = Cluster.load(path)
        try:
            yield cluster, host
        finally:
            try:
                cluster.down(volumes=True)
            finally:
                cluster.close()


def _helpers(host: Host) -> list[str]:
    """Repository helper containers on the host (none may outlive a command)."""
    client = make_client(host.endpoint)
    try:
        found = client.containers.list(all=True, filters={"label": f"{LABEL_BACKUP}=files"})
        return [str(c.name) for c in found]
    finally:
        client.close()


def test_backup_point_and_restore_with_the_repository_on_another_host(
    remote: tuple[Cluster, Host],
) -> None:
    cluster, host = remote
    path = cluster.topology.path
    assert Repository.of(cluster.topology).remote  # through the engine, not this file system
    up = run_shardctl("up", "-f", path)
    assert up.returncode == 0, up.stdout + up.stderr

    preloaded = preload(cluster, 200)
    with traffic(cluster, preloaded) as writers:
        made = run_shardctl("backup", "--name", "b1", "-o", "json", "-f", path)
        assert made.returncode == 0, made.stdout + made.stderr
    assert [f for w in writers for f in w.failed] == []
    assert json.loads(made.stdout)["backup"]["complete"] is True

    proof = _point_under_traffic(cluster, "p1", 10)
    listing = run_shardctl("backups", "-o", "json", "-f", path)
    assert listing.returncode == 0, listing.stdout + listing.stderr
    facts = json.loads(listing.stdout)
    assert [(b["name"], b["complete"]) for b in facts["backups"]] == [("b1", True)]
    assert [p["name"] for p in facts["points"]] == ["b1", "p1"]
    assert len(facts["archives"]) == 2
    for archive in facts["archives"]:
        assert archive["first_segment"] and archive["last_segment"], archive
        assert archive["newest_wal_age_seconds"] is not None, archive
        assert archive["newest_wal_age_seconds"] < 300, archive
    verified = run_shardctl("verify-replication", "-o", "json", "-f", path)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    archiving = [c for c in json.loads(verified.stdout)["checks"] if c["check"] == "archiving"]
    assert len(archiving) == 2 and all(c["ok"] for c in archiving), archiving
    status = run_shardctl("status", "-o", "json", "-f", path)
    assert status.returncode == 0, status.stdout + status.stderr
    primaries = [n for n in json.loads(status.stdout)["nodes"] if n["archiving"] is not None]
    assert len(primaries) == 2
    for node in primaries:  # the newest WAL's time read from the repository on host b
        assert node["archiving"]["state"] == "ok", node
        assert node["archiving"]["newest_wal"] is not None, node
    assert _helpers(host) == []  # the backup node served every file operation

    down = run_shardctl("down", "--volumes", "--yes", "-f", path)
    assert down.returncode == 0, down.stdout + down.stderr
    started = time.monotonic()
    restored = run_shardctl("restore", "--to", "p1", "--yes", "-f", path, timeout=600)
    assert restored.returncode == 0, restored.stdout + restored.stderr
    print(f"restore took {time.monotonic() - started:.1f}s")
    assert _helpers(host) == []  # the helper it needed without a backup node is gone
    fresh = Cluster.load(path)
    try:
        assert proof.check(fresh) > 20
    finally:
        fresh.close()
    _healthy(path)
    again = run_shardctl("backups", "-o", "json", "-f", path)
    assert again.returncode == 0, again.stdout + again.stderr
    archives = {a["shard"]: a for a in json.loads(again.stdout)["archives"]}
    assert {s: a["generation"] for s, a in archives.items()} == {"shard-0": 2, "shard-1": 2}

    # The retention, through the engine too: b1's copies and the WAL before b2 go.
    second = run_shardctl("backup", "--name", "b2", "-o", "json", "-f", path)
    assert second.returncode == 0, second.stdout + second.stderr
    assert json.loads(second.stdout)["removed"] == ["b1"]
    pruned = run_shardctl("backups", "-o", "json", "-f", path)
    assert pruned.returncode == 0, pruned.stdout + pruned.stderr
    facts = json.loads(pruned.stdout)
    assert [b["name"] for b in facts["backups"]] == ["b2"]
    for archive in facts["archives"]:
        before = archives[archive["shard"]]
        assert archive["first_segment"] > before["first_segment"], (archive, before)
    # (the simulated host shares this machine's disk: look, to be sure)
    folder = Repository.of(cluster.topology).folder
    assert not (folder / "shard-0" / "base" / "b1").exists()
    assert (folder / "shard-0" / "base" / "b2" / "backup_manifest").is_file()
    assert _helpers(host) == []
