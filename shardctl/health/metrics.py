"""Prometheus metrics: a :class:`~shardctl.health.scrape.Snapshot` as metric families.

:func:`families` is pure (unit-tested) and the only place metric names live; every metric is
listed in docs/monitoring.md. Names follow postgres_exporter and patroni where the meaning is
the same; labels are ``cluster``, ``shard``, ``node`` and ``role`` (the acting role, from the
catalog). :class:`Collector` plugs a :class:`~shardctl.health.scrape.Scraper` into
prometheus_client: each scrape reads the cluster afresh, within the scraper's timeout.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from contextlib import suppress

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector as PrometheusCollector

from shardctl.config.schema import Role
from shardctl.config.topology import Node, Topology
from shardctl.errors import ShardctlError
from shardctl.health.facts import ContainerState
from shardctl.health.scrape import COLLECTORS, Scraper, Snapshot
from shardctl.health.status import status_rows
from shardctl.state import inflight

PREFIX = "shardctl"
NODE_LABELS = ("cluster", "shard", "node", "role")
SHARD_LABELS = ("cluster", "shard")
CLUSTER_LABELS = ("cluster",)
Family = GaugeMetricFamily | CounterMetricFamily


def _node_labels(topology: Topology, node: Node) -> list[str]:
    return [topology.cluster, node.shard, node.name, node.role.value]


def _gauge(name: str, doc: str, labels: Sequence[str], unit: str = "") -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{PREFIX}_{name}", doc, labels=list(labels), unit=unit)


def _flag(value: bool | None) -> float:
    return 1.0 if value else 0.0


def families(snap: Snapshot) -> list[Family]:
    """Every metric family of one snapshot (names and meanings: docs/monitoring.md)."""
    out: list[Family] = []
    out += _node_families(snap)
    out += _cluster_families(snap)
    out += _pooler_families(snap)
    out += _archiver_families(snap)
    out += _backup_families(snap)
    out += _operation_families(snap)
    out += _rows_families(snap)
    out += _scrape_families(snap)
    return out


def _node_families(snap: Snapshot) -> list[Family]:
    topo, facts = snap.topology, snap.facts
    rows = {r.name: r for r in status_rows(facts)}
    up = _gauge("up", "1 when the node's server answered within the scrape timeout.", NODE_LABELS)
    running = _gauge(
        "container_running", "1 when Docker says the node's container runs.", NODE_LABELS
    )
    primary = _gauge("primary", "1 when the server is out of recovery (writable).", NODE_LABELS)
    replica = _gauge("replica", "1 when the server is in recovery (a standby).", NODE_LABELS)
    healthy = _gauge(
        "healthy", "1 when every check of verify-replication passes for the node.", NODE_LABELS
    )
    timeline = _gauge("postgres_timeline", "The server's timeline.", NODE_LABELS)
    position = _gauge(
        "wal_position",
        "WAL position: the current write LSN on a primary, the replay LSN on a replica.",
        NODE_LABELS,
        unit="bytes",
    )
    received = _gauge(
        "wal_received_position", "A replica's last received LSN.", NODE_LABELS, unit="bytes"
    )
    lag_bytes = _gauge(
        "replication_lag",
        "Bytes a replica has yet to replay, against its primary's current LSN.",
        NODE_LABELS,
        unit="bytes",
    )
    lag_seconds = _gauge(
        "replication_lag",
        "A replica's replay delay; 0 when everything received is replayed (an idle primary).",
        NODE_LABELS,
        unit="seconds",
    )
    streaming = _gauge(
        "replication_streaming",
        "1 when a replica's WAL receiver streams from its primary.",
        NODE_LABELS,
    )
    slot_labels = (*NODE_LABELS, "slot")
    slot_active = _gauge(
        "replication_slot_active",
        "1 when a replica's slot on its primary is active.",
        slot_labels,
    )
    slot_safe = _gauge(
        "replication_slot_safe_wal_size",
        "WAL that can still be written before the slot is lost (when max_slot_wal_keep_size "
        "is set).",
        slot_labels,
        unit="bytes",
    )
    probe = _gauge(
        "probe_duration", "How long the node took to answer.", NODE_LABELS, unit="seconds"
    )
    for obs in facts.nodes:
        node, own = obs.node, obs.facts
        labels = _node_labels(topo, node)
        up.add_metric(labels, _flag(own is not None))
        running.add_metric(labels, _flag(obs.container is ContainerState.RUNNING))
        primary.add_metric(labels, _flag(own is not None and not own.in_recovery))
        replica.add_metric(labels, _flag(own is not None and own.in_recovery))
        row = rows.get(node.name)
        healthy.add_metric(labels, _flag(row is not None and row.healthy))
        if own is None:
            if node.role is Role.REPLICA:
                streaming.add_metric(labels, 0.0)
            continue
        probe.add_metric(labels, obs.probe_seconds)
        if own.timeline is not None:
            timeline.add_metric(labels, float(own.timeline))
        if own.lsn is not None:
            position.add_metric(labels, float(own.lsn))
        if node.role is not Role.REPLICA:
            continue
        if own.receive_lsn is not None:
            received.add_metric(labels, float(own.receive_lsn))
        streaming.add_metric(
            labels, _flag(own.receiver is not None and own.receiver.status == "streaming")
        )
        behind = facts.lag_bytes(obs)
        if behind is not None and own.in_recovery:
            lag_bytes.add_metric(labels, float(behind))
        delay = facts.lag_seconds(obs)
        if delay is not None and own.in_recovery:
            lag_seconds.add_metric(labels, delay)
        upstream = facts.primary_of(node).facts
        found = upstream.slot(node.slot) if upstream is not None else None
        if upstream is not None:
            slot_active.add_metric([*labels, node.slot], _flag(found is not None and found.active))
        if found is not None and found.safe_wal_size is not None:
            slot_safe.add_metric([*labels, node.slot], float(found.safe_wal_size))
    split = _gauge(
        "shard_primaries",
        "Servers of the shard out of recovery: 1 is right, 2 or more is a split brain.",
        SHARD_LABELS,
    )
    for shard in topo.spec.shards:
        writable = [
            o
            for o in facts.nodes
            if o.node.shard == shard.name and o.facts is not None and not o.facts.in_recovery
        ]
        split.add_metric([topo.cluster, shard.name], float(len(writable)))
    return [
        up,
        running,
        primary,
        replica,
        healthy,
        split,
        timeline,
        position,
        received,
        lag_bytes,
        lag_seconds,
        streaming,
        slot_active,
        slot_safe,
        probe,
    ]


def _cluster_families(snap: Snapshot) -> list[Family]:
    topo = snap.topology
    out: list[Family] = []
    if snap.record is not None:
        epoch = _gauge("ring_epoch", "The current ring epoch in the catalog.", CLUSTER_LABELS)
        epoch.add_metric([topo.cluster], float(snap.record.epoch))
        share = _gauge(
            "ring_key_share",
            "The fraction of the key space (the ring's circle) the shard owns, 0 to 1.",
            SHARD_LABELS,
            unit="ratio",
        )
        with suppress(ShardctlError):
            for shard, fraction in snap.record.ring().shares().items():
                share.add_metric([topo.cluster, shard], fraction)
        out += [epoch, share]
    changed = _gauge(
        "last_role_change_timestamp",
        "When the shard's primary last changed (switchover or failover), Unix time.",
        SHARD_LABELS,
        unit="seconds",
    )
    failover = _gauge(
        "last_failover_timestamp",
        "When the shard last failed over (a replica promoted, the old primary fenced).",
        SHARD_LABELS,
        unit="seconds",
    )
    for shard, times in sorted(snap.role_changes.items()):
        if times.last_change is not None:
            changed.add_metric([topo.cluster, shard], times.last_change)
        if times.last_failover is not None:
            failover.add_metric([topo.cluster, shard], times.last_failover)
    return [*out, changed, failover]


def _pooler_families(snap: Snapshot) -> list[Family]:
    topo = snap.topology
    up = _gauge("pooler_up", "1 when the node's PgBouncer answered.", NODE_LABELS)
    waiting = _gauge(
        "pooler_clients_waiting", "Clients waiting for a server connection.", NODE_LABELS
    )
    active = _gauge("pooler_clients_active", "Clients linked to a server.", NODE_LABELS)
    longest = _gauge(
        "pooler_max_wait", "The longest wait of a waiting client.", NODE_LABELS, unit="seconds"
    )
    for pooled in snap.facts.poolers:
        labels = _node_labels(topo, topo.node(pooled.node.name))
        up.add_metric(labels, _flag(pooled.facts is not None))
        if pooled.facts is not None:
            waiting.add_metric(labels, float(pooled.facts.clients_waiting))
            active.add_metric(labels, float(pooled.facts.clients_active))
            longest.add_metric(labels, pooled.facts.max_wait_seconds)
    return [up, waiting, active, longest]


def _archiver_families(snap: Snapshot) -> list[Family]:
    topo = snap.topology
    enabled = _gauge(
        "wal_archiving_enabled", "1 when the primary's archive_mode is on.", NODE_LABELS
    )
    archived = CounterMetricFamily(
        f"{PREFIX}_wal_archived",
        "WAL files archived since the statistics were reset (pg_stat_archiver).",
        labels=list(NODE_LABELS),
    )
    failed = CounterMetricFamily(
        f"{PREFIX}_wal_archive_failed",
        "Failed attempts to archive a WAL file (pg_stat_archiver).",
        labels=list(NODE_LABELS),
    )
    last_ok = _gauge(
        "wal_last_archived_timestamp",
        "When the last WAL file was archived, Unix time.",
        NODE_LABELS,
        unit="seconds",
    )
    last_failed = _gauge(
        "wal_last_archive_failed_timestamp",
        "When archiving last failed, Unix time.",
        NODE_LABELS,
        unit="seconds",
    )
    pending = _gauge(
        "wal_archive_pending_files",
        "WAL files waiting to be archived (.ready in archive_status).",
        NODE_LABELS,
    )
    for name, archiver in sorted(snap.archivers.items()):
        labels = _node_labels(topo, topo.node(name))
        enabled.add_metric(labels, _flag(archiver.enabled))
        archived.add_metric(labels, float(archiver.archived))
        failed.add_metric(labels, float(archiver.failed))
        if archiver.last_archived is not None:
            last_ok.add_metric(labels, archiver.last_archived)
        if archiver.last_failed is not None:
            last_failed.add_metric(labels, archiver.last_failed)
        if archiver.pending is not None:
            pending.add_metric(labels, float(archiver.pending))
    return [enabled, archived, failed, last_ok, last_failed, pending]


def _backup_families(snap: Snapshot) -> list[Family]:
    """The backup repository (``backup:``): per shard, the last base backup and the archive of
    the backup node's WAL stream (docs/backup.md)."""
    if not snap.archives:
        return []
    cluster = snap.topology.cluster
    last = _gauge(
        "backup_last_complete_timestamp",
        "When the newest complete (verified) base backup of the shard finished, Unix time.",
        SHARD_LABELS,
        unit="seconds",
    )
    newest = _gauge(
        "backup_wal_newest_timestamp",
        "When the repository's newest archived WAL file of the shard was last written, Unix time.",
        SHARD_LABELS,
        unit="seconds",
    )
    lag_seconds = _gauge(
        "backup_wal_lag",
        "Age of the newest archived WAL while WAL waits to be archived, 0 when all is: the RPO "
        "right now.",
        SHARD_LABELS,
        unit="seconds",
    )
    lag_bytes = _gauge(
        "backup_wal_lag",
        "WAL the acting primary has written that the backup node has not stored yet.",
        SHARD_LABELS,
        unit="bytes",
    )
    streaming = _gauge(
        "backup_wal_streaming",
        "1 when the backup node streams the shard's WAL (its slot on the primary is active).",
        SHARD_LABELS,
    )
    ok = _gauge(
        "backup_archiving_ok",
        "1 when the shard's archiving is ok as status judges it (0: stuck, behind, no slot).",
        SHARD_LABELS,
    )
    full = _gauge(
        "backup_repository_full",
        "1 when the shard's archiving is stuck because the repository is full (less room than "
        "two WAL segments), as status says.",
        SHARD_LABELS,
    )
    free = _gauge(
        "backup_repository_free",
        "Room left on the backup repository's file system.",
        CLUSTER_LABELS,
        unit="bytes",
    )
    if snap.repository_free is not None:
        free.add_metric([cluster], float(snap.repository_free))
    for shard, state in sorted(snap.archives.items()):
        labels = [cluster, shard]
        if state.state != "unknown":
            ok.add_metric(labels, _flag(state.ok))
            if state.ok or state.repository_free is not None:  # unknown room: no sample
                full.add_metric(labels, _flag(state.repository_full))
            streaming.add_metric(labels, _flag(state.state not in ("no slot", "not streaming")))
        if state.behind_bytes is not None:
            lag_bytes.add_metric(labels, float(state.behind_bytes))
        if state.lag_seconds is not None:
            lag_seconds.add_metric(labels, state.lag_seconds)
        if state.newest_wal is not None:
            newest.add_metric(labels, state.newest_wal)
    for shard, finished in sorted(snap.last_backup.items()):
        last.add_metric([cluster, shard], finished)
    return [last, newest, lag_seconds, lag_bytes, streaming, ok, full, free]


def _operation_families(snap: Snapshot) -> list[Family]:
    if snap.operations is None:
        return []
    cluster = snap.topology.cluster
    reshards = [op for op in snap.operations if op.kind == inflight.RESHARD]
    in_flight = _gauge(
        "reshard_in_flight",
        "1 while a reshard (rebalance, add-shard, remove-shard) is unfinished.",
        CLUSTER_LABELS,
    )
    in_flight.add_metric([cluster], _flag(bool(reshards)))
    phase = _gauge(
        "reshard_phase",
        "1 for the phase the unfinished reshard is in (label phase, id).",
        (*CLUSTER_LABELS, "id", "phase"),
    )
    counts = {
        "reshard_copied_rows": "Rows copied to their new owners so far.",
        "reshard_planned_rows": "Rows the reshard's plan moves.",
        "reshard_copied_ranges": "Key ranges whose copy is done.",
        "reshard_planned_ranges": "Key ranges the plan moves.",
    }
    gauges = {name: _gauge(name, doc, CLUSTER_LABELS) for name, doc in counts.items()}
    started = _gauge(
        "reshard_started_timestamp",
        "When the unfinished reshard started, Unix time.",
        CLUSTER_LABELS,
        unit="seconds",
    )
    updated = _gauge(
        "reshard_updated_timestamp",
        "When the unfinished reshard last recorded a phase, Unix time.",
        CLUSTER_LABELS,
        unit="seconds",
    )
    for op in reshards:
        phase.add_metric([cluster, str(op.id), op.phase], 1.0)
        values = {
            "reshard_copied_rows": op.rows_copied,
            "reshard_planned_rows": op.rows_total,
            "reshard_copied_ranges": op.ranges_done,
            "reshard_planned_ranges": op.ranges_total,
        }
        for name, value in values.items():
            if value is not None:
                gauges[name].add_metric([cluster], float(value))
        if op.started_at is not None:
            started.add_metric([cluster], op.started_at.timestamp())
        if op.updated_at is not None:
            updated.add_metric([cluster], op.updated_at.timestamp())
    fenced = _gauge(
        "role_change_fenced",
        "1 while the shard's primary is fenced for a role change (a switchover running or "
        "stopped half-way: `shardctl up` finishes it).",
        SHARD_LABELS,
    )
    fenced_shards = {
        shard for op in snap.operations if op.kind == inflight.ROLE_CHANGE for shard in op.shards
    }
    for shard in snap.topology.spec.shards:
        fenced.add_metric([cluster, shard.name], _flag(shard.name in fenced_shards))
    return [in_flight, phase, *gauges.values(), started, updated, fenced]


def _rows_families(snap: Snapshot) -> list[Family]:
    view = snap.rows
    if view is None:
        return []
    cluster = snap.topology.cluster
    table_labels = (*SHARD_LABELS, "table")
    rows = _gauge("table_rows", "Rows of the sharded table on the shard's primary.", table_labels)
    misplaced = _gauge(
        "table_misplaced_rows",
        "Rows whose key the ring gives to another shard.",
        table_labels,
    )
    duplicates = _gauge(
        "table_duplicate_keys",
        "Keys stored on this shard and on another one too.",
        table_labels,
    )
    share = _gauge(
        "table_expected_share",
        "The share of the table's rows the ring gives the shard, 0 to 1.",
        table_labels,
        unit="ratio",
    )
    if view.counted is not None:
        for counted in view.counted.shards:
            labels = [cluster, counted.shard, counted.table]
            rows.add_metric(labels, float(counted.rows))
            misplaced.add_metric(labels, float(counted.misplaced))
            duplicates.add_metric(labels, float(counted.duplicates))
            share.add_metric(labels, counted.expected_share)
    age = _gauge(
        "rows_count_age",
        "Seconds since the rows were last counted (in the background, every interval).",
        CLUSTER_LABELS,
        unit="seconds",
    )
    if view.age_seconds is not None:
        age.add_metric([cluster], view.age_seconds)
    took = _gauge(
        "rows_count_duration",
        "How long the last successful count took.",
        CLUSTER_LABELS,
        unit="seconds",
    )
    if view.duration_seconds is not None:
        took.add_metric([cluster], view.duration_seconds)
    ok = _gauge("rows_count_success", "1 when the last count succeeded.", CLUSTER_LABELS)
    ok.add_metric([cluster], _flag(view.ok))
    return [rows, misplaced, duplicates, share, age, took, ok]


def _scrape_families(snap: Snapshot) -> list[Family]:
    cluster = snap.topology.cluster
    took = _gauge(
        "scrape_duration", "How long this collection took.", CLUSTER_LABELS, unit="seconds"
    )
    took.add_metric([cluster], snap.seconds)
    limit = _gauge(
        "scrape_timeout",
        "The deadline of every collection: a node not answering by then is up 0.",
        CLUSTER_LABELS,
        unit="seconds",
    )
    limit.add_metric([cluster], snap.timeout)
    success = _gauge(
        "scrape_collector_success",
        "1 when the part of the collection (label collector) finished within the timeout.",
        (*CLUSTER_LABELS, "collector"),
    )
    for name in COLLECTORS:
        if name in snap.collectors:
            success.add_metric([cluster, name], _flag(snap.collectors[name]))
    return [took, limit, success]


class Collector(PrometheusCollector):
    """A prometheus_client collector that reads the cluster on every scrape. Scrapes that
    arrive while a reading is under way share it (two Prometheus servers scraping at once
    read the cluster once, and neither waits longer than one reading)."""

    def __init__(self, scraper: Scraper) -> None:
        self.scraper = scraper
        self._guard = threading.Lock()
        self._reading: Future[Snapshot] | None = None

    def collect(self) -> Iterator[Family]:
        """The metric families of a fresh snapshot (prometheus_client calls this per scrape)."""
        with self._guard:
            reading, leader = self._reading, self._reading is None
            if reading is None:
                reading = self._reading = Future()
        if leader:
            try:
                reading.set_result(self.scraper.snapshot())
            except BaseException as exc:  # handed to the scrapes sharing this reading
                reading.set_exception(exc)
            finally:
                with self._guard:
                    self._reading = None
        yield from families(reading.result())

    def describe(self) -> list[Family]:
        """Nothing: registering the collector must not read the cluster."""
        return []
