"""``shardctl restore``: a whole cluster brought back to one moment from the repository.

Per shard, at once: the acting primary's volume (as the point recorded the roles) gets the base
backup the point names, and PostgreSQL's own recovery replays the archived WAL to the target
(``recovery_target_name``, ``_time``, or the end of the archive) with ``restore_command``
reading the repository mounted read-only, then promotes: a new timeline, whose history file and
first segment start a new WAL generation of the shard in the restored cluster's repository, so
nothing the repository held is ever written over. The roles get the restored cluster's
passwords (generated anew when none are stored). For ``--time`` and ``--latest`` the node is the
one the newest record (point or base backup) before the target names (:func:`roles_at`); when
the restored catalog names another (a role change after that record), the restore writes one
more epoch with the roles as restored. Then ``up`` makes the rest as always: replicas
cloned from the restored primaries, the catalog (restored with the data: the point's epoch and
roles), the fence (the point's own fence row lifted), poolers and the backup node.

Into a new cluster (``--from CLUSTER``) the topology's cluster must not exist yet; in place the
cluster's nodes must all be stopped (``shardctl down``), and its volumes are replaced.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any

from shardctl.config.topology import Node, Topology
from shardctl.docker.backup_specs import restore_spec
from shardctl.docker.records import cluster_labels
from shardctl.docker.specs import data_mount
from shardctl.errors import CheckFailed, ProvisioningError, UsageError
from shardctl.ops.backup.repository import (
    BackupRecord,
    PointRecord,
    Repository,
    check_name,
    now,
)
from shardctl.ops.cluster import Cluster
from shardctl.ops.reporting import Reporter, quiet_reporter
from shardctl.ops.up import UpReport
from shardctl.util import fanout

RESTORE_TIMEOUT = 3600.0
NOT_REACHED = re.compile(r"recovery ended before configured recovery target was reached")
ROLES_REWRITTEN = "names the restored primaries"
"""What the restore script prints when it wrote the restored roles into the catalog."""


@dataclass(frozen=True)
class Target:
    """Where to restore to: a named point, a moment, or the end of the archive."""

    point: str | None = None
    time: datetime | None = None
    latest: bool = False

    def describe(self) -> str:
        """The target as the report names it."""
        if self.point is not None:
            return f"point {self.point}"
        if self.time is not None:
            return f"time {self.time.isoformat()}"
        return "the end of the archive"


@dataclass(frozen=True)
class ShardPlan:
    """How one shard is restored."""

    shard: str
    node: str
    backup: BackupRecord
    settings: tuple[str, ...]


@dataclass
class RestoreReport:
    """What ``restore`` did."""

    cluster: str
    source: str
    target: str
    shards: dict[str, dict[str, Any]] = field(default_factory=dict)
    seconds: float = 0.0
    up: UpReport | None = None


def restore(
    cluster: Cluster,
    target: Target,
    *,
    source: str | None = None,
    yes: bool = False,
    reporter: Reporter = quiet_reporter,
) -> RestoreReport:
    """Restore ``cluster`` (its topology's cluster) from ``source``'s repository (default: its
    own, in place) to ``target``, then bring it up healthy."""
    started = time.monotonic()
    topology = cluster.topology
    source = source or topology.cluster
    in_place = source == topology.cluster
    archive = Repository.of(topology, source)
    archive.require()
    plans, primaries = _plan(topology, archive, target)
    for plan in plans:  # before anything is changed
        check_engine(topology.node(plan.node), archive)
    states, lost = cluster.engines.container_states_per_engine(topology)
    for error in lost.values():
        raise error
    if in_place:
        running = sorted(name for name, state in states.items() if state != "exited")
        if running:
            raise UsageError(
                f"{topology.cluster} is running ({', '.join(running[:3])}): a restore in place "
                "replaces its data; run `shardctl down` first"
            )
        if not yes:
            raise UsageError(
                f"restoring {topology.cluster} in place replaces all of its data: add --yes"
            )
    elif states or any(cluster.engines.has_volume(n) for n in topology.nodes):
        raise UsageError(
            f"cluster {topology.cluster!r} exists already: a restore from {source} builds a new "
            "cluster; give the topology another cluster name, or `shardctl down --volumes`"
        )
    credentials = cluster.credentials(create=True)
    if credentials.app_password is None:
        raise UsageError("no application role password: declare credentials.app_password_env")
    acting = topology.with_acting(primaries)
    engines = cluster.engines
    if in_place:
        reporter("volumes", "removing the cluster's volumes")
        engines.remove_volumes(topology)
    home = Repository.of(topology)
    home.prepare()
    for endpoint in engines.endpoints(acting):  # before the shards' threads: one each
        engines.ensure_network(acting.network, cluster_labels(acting.cluster), endpoint)
    report = RestoreReport(topology.cluster, source, target.describe())

    def one(plan: ShardPlan) -> dict[str, Any]:
        node = acting.node(plan.node)
        return _restore_shard(
            cluster,
            acting,
            node,
            plan,
            archive,
            home,
            credentials.app_password or "",
            reporter,
            primaries,
        )

    results = fanout.gather({plan.shard: partial(one, plan) for plan in plans})
    for shard, result in results.items():
        if isinstance(result, BaseException):
            raise result
        report.shards[shard] = result
    generation = max((int(r["generation"]) for r in report.shards.values()), default=1)
    home.write_restore(
        generation,
        {
            "restored": now(),
            "from_cluster": source,
            "target": target.describe(),
            "shards": report.shards,
        },
    )
    restored = Cluster(acting, cluster.engines)  # the point's roles, not the declared ones
    report.up = restored.up(reporter=reporter)
    report.seconds = time.monotonic() - started
    return report


def _plan(
    topology: Topology, archive: Repository, target: Target
) -> tuple[list[ShardPlan], dict[str, str]]:
    shards = [s.name for s in topology.spec.shards]
    complete = archive.complete_backups()
    if target.point is not None:
        check_name(target.point, "point")
        point = archive.point(target.point)
        if point is None:
            known = ", ".join(p.name for p in archive.points()[-5:]) or "none"
            raise UsageError(
                f"no restore point {target.point!r} of {archive.cluster} in {archive.root} "
                f"(latest: {known}; see `shardctl backups`)"
            )
        missing = [s for s in shards if s not in point.shards]
        extra = [s for s in point.shards if s not in shards]
        if missing or extra:
            raise UsageError(
                f"point {point.name} has shards {', '.join(sorted(point.shards))}; the topology "
                f"declares {', '.join(shards)}: restore into a topology with the same shards"
            )
        plans = []
        for shard in shards:
            at = point.shards[shard]
            backup = archive.backup(at.backup)
            if backup is None or not backup.complete or shard not in backup.shards:
                raise CheckFailed(
                    f"{shard}: base backup {at.backup} of point {point.name} is gone "
                    "(removed by the retention?)"
                )
            copy = backup.shards[shard]
            if copy.timeline != at.timeline and not archive.history(shard).holds(copy, at.timeline):
                raise CheckFailed(
                    f"{shard}: base backup {at.backup} of point {point.name} is not on timeline "
                    f"{at.timeline}'s history (it holds WAL a failover lost): the point cannot "
                    "be restored; nothing was changed"
                )
            named = (
                "-c",
                f"recovery_target_name={point.name}",
                "-c",
                f"recovery_target_timeline={at.timeline}",
            )
            node = _declared(topology, shard, point.primaries.get(shard))
            plans.append(ShardPlan(shard, node, backup, named))
        return plans, {plan.shard: plan.node for plan in plans}
    if not complete:
        raise CheckFailed(f"no complete base backup of {archive.cluster} in {archive.root}")
    plans = []
    primaries: dict[str, str] = {}
    moment = target.time.timestamp() if target.time is not None else None
    roles = roles_at(complete, archive.points(), moment)
    for shard in shards:
        usable = [b for b in complete if shard in b.shards]
        if target.time is not None:
            moment = target.time.timestamp()
            usable = [b for b in usable if (b.finished or b.started) <= moment]
        # recovery_target_timeline = latest: the newest timeline in the archive, which a copy
        # taken on WAL a failover then lost cannot start.
        histories = archive.history(shard)
        timeline = histories.newest
        on = [b for b in usable if histories.holds(b.shards[shard], timeline)]
        if usable and not on:
            raise UsageError(
                f"{shard}: no complete base backup before the target on timeline {timeline}'s "
                f"history (the newest, {usable[-1].name}, holds WAL a failover lost): restore a "
                "point taken before the failover, or take a backup"
            )
        usable = on
        if not usable:
            earliest = min((b.finished or b.started for b in complete), default=None)
            shown = (
                datetime.fromtimestamp(earliest).astimezone().isoformat(timespec="seconds")
                if earliest
                else "none"
            )
            raise UsageError(
                f"{shard}: no complete base backup before the target (earliest ends {shown}); "
                "see `shardctl backups` for the recoverable window"
            )
        backup = usable[-1]
        node = _declared(topology, shard, roles.get(shard) or backup.primaries.get(shard))
        primaries[shard] = node
        settings = ["-c", "recovery_target_timeline=latest"]
        if target.time is not None:
            settings += ["-c", f"recovery_target_time={target.time.isoformat()}"]
        plans.append(ShardPlan(shard, node, backup, tuple(settings)))
    return plans, primaries


def roles_at(
    backups: Sequence[BackupRecord], points: Sequence[PointRecord], moment: float | None
) -> dict[str, str]:
    """Each shard's acting primary as the newest record at or before ``moment`` (None: the
    newest of all) holds it: a point's roles when it was made, a complete base backup's when
    it started. A role change after that record is not in it: the restore script then writes
    the restored roles into the catalog (see :func:`~shardctl.docker.backup_specs.restore_spec`).
    """
    dated = [(b.started, b.primaries) for b in backups if b.complete]
    dated += [(p.created, p.primaries) for p in points]
    roles: dict[str, str] = {}
    for when, primaries in sorted(dated, key=lambda item: item[0]):
        if moment is not None and when > moment:
            break
        roles.update(primaries)
    return roles


def _declared(topology: Topology, shard: str, node: str | None) -> str:
    """``node`` when this topology declares it in ``shard`` (a restore into a topology with
    fewer replicas may not), else the shard's declared primary."""
    names = {n.name for n in topology.shard_nodes(shard)}
    return node if node in names else f"{shard}-primary"


def check_engine(node: Node, archive: Repository) -> None:
    """UsageError unless ``node`` (a shard's restored primary) runs on the repository's engine:
    its restore reads the repository as a folder of that engine's host."""
    if node.placement.name != archive.placement.name:
        raise UsageError(
            f"{node.name} runs on engine {node.placement.name}, the repository on "
            f"{archive.placement.name}: a restore needs each restored primary on the "
            "repository's engine (see docs/backup.md, Limits)"
        )


def _restore_shard(
    cluster: Cluster,
    topology: Topology,
    node: Node,
    plan: ShardPlan,
    archive: Repository,
    home: Repository,
    app_password: str,
    reporter: Reporter,
    roles: dict[str, str],
) -> dict[str, Any]:
    engines = cluster.engines
    endpoint = node.placement
    volumes = engines.image_volumes(topology.spec.image, endpoint)
    if volumes is None:
        volumes = engines.pull(topology.spec.image, endpoint)
    mount = data_mount(volumes)
    engines.ensure_volume(node)
    generation = (max(home.generations(plan.shard), default=0)) + 1
    seed_folder = home.make_wal_folder(plan.shard)
    copy = plan.backup.shards[plan.shard]
    spec = restore_spec(
        topology,
        node,
        mount,
        repository=str(archive.root),
        base=copy.path,
        wal=archive.relative(archive.wal_folder(plan.shard)),
        seed=(str(seed_folder), generation),
        settings=plan.settings,
        roles=roles,
    )
    credentials = cluster.credentials()
    leftover = engines.named(spec.name, endpoint)
    if leftover is not None:
        engines.remove_container(leftover, stop_timeout=5)
    reporter(node.name, f"restoring from {plan.backup.name}")
    container = engines.create_container(
        spec,
        {
            "superuser": credentials.superuser_password,
            "replication": credentials.replication_password,
            "app": app_password,
        },
        endpoint,
    )
    try:
        engines.start(container)
        code = engines.wait_exit(container, timeout=RESTORE_TIMEOUT)
        tail = engines.log_tail(container, 40)
    finally:
        engines.remove_container(container, stop_timeout=5)
    if code != 0:
        engines.remove_node(node)  # no half-restored primary for `up` to start
        if NOT_REACHED.search(tail):
            raise CheckFailed(
                f"{plan.shard}: the archive ends before the target: recovery did not reach it "
                "(see `shardctl backups` for the recoverable window)"
            )
        raise ProvisioningError(f"{plan.shard}: restoring {node.name} failed:\n{tail}")
    reporter(node.name, "restored")
    return {
        "node": node.name,
        "backup": plan.backup.name,
        "generation": generation,
        "catalog_roles_rewritten": ROLES_REWRITTEN in tail,
    }
