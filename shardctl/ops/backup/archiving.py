"""Continuous archiving: the backup node streams every acting primary's WAL into the repository.

One container per cluster on the repository's engine (the cluster's image, the repository
bind-mounted) runs ``pg_receivewal --synchronous`` per shard through a physical slot
(:data:`~shardctl.config.constants.BACKUP_SLOT`) on the shard's acting primary, as the
replication role. The servers need no ``archive_command``.

:func:`ensure` converges it: the slot on every acting primary (dropped from nodes that are no
longer one: a slot nobody streams from would keep WAL forever), and the container made again
when its targets changed. ``up``, ``switchover``, ``failover`` and the reshard commands call it,
so archiving follows the acting primaries (a new primary continues the old timeline's WAL and
then its own, which ``pg_receivewal`` follows) and the shards the topology declares.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import psycopg

from shardctl.config.addresses import CONTAINER_PORT, address
from shardctl.config.constants import BACKUP_SLOT
from shardctl.config.credentials import Credentials
from shardctl.config.schema import Role
from shardctl.config.topology import Node, Topology
from shardctl.db import pg
from shardctl.docker.backup_specs import backup_node_spec
from shardctl.docker.engine import Engines
from shardctl.docker.records import LABEL_CONFIG, cluster_labels, config_digest
from shardctl.errors import CheckFailed, DatabaseUnavailable
from shardctl.ops.backup.repository import Repository
from shardctl.util.waiting import NotYet, wait_for

Conn = psycopg.Connection[Any]


def reach(topology: Topology, repository: Repository, node: Node) -> tuple[str, int]:
    """Host and port the backup node reaches ``node`` on: its container on a shared engine,
    else its advertised address and published port."""
    if node.placement.name == repository.placement.name:
        return node.container, CONTAINER_PORT
    return address(node)


def container_name(topology: Topology) -> str:
    """The backup node's container name."""
    return f"{topology.cluster}-backup"


def ensure(
    topology: Topology,
    engines: Engines,
    credentials: Credentials,
    report: Callable[[str, str], None] = lambda _node, _step: None,
) -> str:
    """The backup node streaming from every acting primary, each with its slot; what was done
    (``created``, ``recreated``, ``started`` or ``unchanged``)."""
    repository = Repository.of(topology)
    repository.prepare()
    for node in topology.nodes:
        try:
            with pg.connect(node, credentials, "postgres", local_commit=True) as conn:
                if node.role is Role.PRIMARY:
                    _create_slot(conn)
                else:
                    _drop_slot(conn)
        except DatabaseUnavailable:
            if node.role is Role.PRIMARY:
                raise
    targets = [
        (primary.shard, *reach(topology, repository, primary)) for primary in topology.primaries()
    ]
    spec = backup_node_spec(topology, str(repository.root), targets)
    endpoint = repository.placement
    engines.ensure_network(topology.network, cluster_labels(topology.cluster), endpoint)
    container = engines.named(spec.name, endpoint)
    action = "unchanged"
    if container is not None and container.labels.get(LABEL_CONFIG) != config_digest(spec):
        report(spec.name, "recreating (its primaries changed)")
        engines.remove_container(container, stop_timeout=10)
        container, action = None, "recreated"
    if container is None:
        report(spec.name, "creating container")
        secrets = {"replication": credentials.replication_password}
        if "ca.crt" in spec.secrets and credentials.tls_root is not None:
            secrets["ca.crt"] = credentials.tls_root.read_text(encoding="utf-8")
        container = engines.create_container(spec, secrets, endpoint)
        action = "recreated" if action == "recreated" else "created"
    if engines.status(container) != "running":
        engines.start(container)
        action = action if action != "unchanged" else "started"
    return action


def _create_slot(conn: Conn) -> None:
    conn.execute(
        "SELECT pg_catalog.pg_create_physical_replication_slot(%s, true) "
        "WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_replication_slots WHERE slot_name = %s)",
        (BACKUP_SLOT, BACKUP_SLOT),
    )


def _drop_slot(conn: Conn) -> None:
    conn.execute(
        "SELECT pg_catalog.pg_drop_replication_slot(slot_name) "
        "FROM pg_catalog.pg_replication_slots WHERE slot_name = %s AND NOT active",
        (BACKUP_SLOT,),
    )


ARCHIVED_LSN = (
    "SELECT pg_catalog.pg_wal_lsn_diff(restart_lsn, '0/0')::bigint, active "
    "FROM pg_catalog.pg_replication_slots WHERE slot_name = %s"
)


def archived(conn: Conn) -> tuple[int | None, bool]:
    """How far the backup node has durably stored this primary's WAL (its slot's flush
    position), and whether it streams now; (None, False) without a slot."""
    row = conn.execute(ARCHIVED_LSN, (BACKUP_SLOT,)).fetchone()
    if row is None or row[0] is None:
        return None, False
    return int(row[0]), bool(row[1])


def wait_archived(conn: Conn, lsn: int, shard: str, timeout: float) -> float:
    """Wait until the repository holds this primary's WAL up to ``lsn``; the seconds it took.
    CheckFailed naming the shard when it does not within ``timeout``."""
    started = time.monotonic()

    def probe() -> None:
        done, _ = archived(conn)
        if done is None or done < lsn:
            raise NotYet(f"archived up to {done}, need {lsn}")

    def late(detail: str) -> Exception:
        return CheckFailed(
            f"{shard}: its WAL did not reach the backup repository within {timeout:g}s "
            f"({detail}): is the backup node running (`shardctl up`), the repository writable?"
        )

    wait_for(probe, timeout=timeout, what=f"{shard}'s archive", on_timeout=late, max_interval=0.1)
    return time.monotonic() - started
