"""The library object every command starts from: a topology, its engines and credentials.

Every command builds a :class:`Cluster` and calls it: ``up``/``down``, the health views
(``status``, ``verify-replication``, ``distribution``, ``ring``), the role changes and the
reshard commands (``add-shard``, ``rebalance``, ``remove-shard``). Its topology changes in two
ways only, both here: :meth:`Cluster.follow_roles` takes each shard's acting primary from the
catalog, and :meth:`Cluster.resize` carries on with a shard added or removed.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from shardctl.config import credentials as creds
from shardctl.config import topology
from shardctl.config.credentials import Credentials
from shardctl.config.schema import HealthSpec, Role
from shardctl.config.topology import Node, Topology
from shardctl.db import pg
from shardctl.docker.engine import Engines
from shardctl.errors import (
    CheckFailed,
    DatabaseUnavailable,
    DockerUnavailable,
    InfrastructureError,
    ShardctlError,
    UsageError,
)
from shardctl.health import facts as health
from shardctl.ops.reporting import Reporter, quiet_reporter
from shardctl.state import catalog, inflight, monitor
from shardctl.util import fanout
from shardctl.util.text import first_line
from shardctl.util.waiting import NotYet, wait_for

if TYPE_CHECKING:
    # What only changes the cluster (provisioning, role changes, rolling restarts) and the
    # checks and measures of other commands are imported where used: a read such as
    # ``status`` loads none of them. The reshard modules take a Cluster: imported where used.
    from shardctl.health import distribution as distributions
    from shardctl.health import ringview, verify
    from shardctl.ops import changes, durability
    from shardctl.ops.down import DownReport
    from shardctl.ops.reshard.coordinator import Rebalancer
    from shardctl.ops.reshard.leaving import Removal
    from shardctl.ops.rolechange import RoleChange, RoleChanger, Step
    from shardctl.ops.rolling import ShardRoll
    from shardctl.ops.up import Provisioner, UpReport
    from shardctl.state.plan import Plan


class Cluster:
    """A declared cluster and the means to reach it."""

    def __init__(self, topology: Topology, engines: Engines | None = None) -> None:
        self._topology = topology
        self.engines = engines if engines is not None else Engines()
        self._credentials: Credentials | None = None

    @property
    def topology(self) -> Topology:
        """The declared cluster, with each shard's acting primary once :meth:`follow_roles`
        read them from the catalog."""
        return self._topology

    def resize(self, topology: Topology) -> None:
        """Carry on with ``topology`` (a shard added or removed), keeping the acting roles."""
        self._topology = topology.with_acting(dict(self._topology.acting))

    @classmethod
    def load(cls, path: Path | str | None = None) -> Cluster:
        """Read and validate the topology; nothing is contacted yet."""
        return cls(topology.load(path))

    def credentials(self, *, create: bool = False) -> Credentials:
        """The cluster's passwords (generated and stored on first ``up``)."""
        if self._credentials is None:
            self._credentials = creds.load(self.topology, create=create)
        return self._credentials

    def provisioner(
        self, reporter: Reporter = quiet_reporter, *, create: bool = False
    ) -> Provisioner:
        """A provisioner for this cluster."""
        from shardctl.ops.up import Provisioner

        return Provisioner(self.topology, self.engines, self.credentials(create=create), reporter)

    def follow_roles(self) -> catalog.RingRecord | None:
        """Take the acting roles from the catalog (after a switchover or failover), so that
        every later step sees each shard's real primary; the current record, None if none.

        DatabaseUnavailable when no node answers (the cluster is not running).
        """
        record = catalog.read_any(self.topology, self.credentials()).current
        if record is not None:
            self._topology = self._topology.with_acting(dict(record.primaries))
        return record

    def check_settings(self) -> str | None:
        """The ``postgres:`` settings judged by the image's own server: TopologyError (exit 2,
        file:line, "did you mean") when it refuses one; None when checked, else why they could
        not be (no engine, or the image is not on it)."""
        from shardctl.ops import changes

        endpoint = self.engines.endpoints(self.topology)[0]
        try:
            if self.engines.image_volumes(self.topology.spec.image, endpoint) is None:
                return f"the image {self.topology.spec.image} is not on the engine yet"
        except DockerUnavailable as exc:
            return str(exc)
        changes.server_catalog(self.topology, self.engines)
        return None

    def plan(self) -> changes.Plan:
        """What ``up`` would do to each node and why (``up --plan``); changes nothing."""
        from shardctl.ops import changes

        with contextlib.suppress(DatabaseUnavailable, UsageError):
            self.follow_roles()
        try:
            credentials: Credentials | None = self.credentials()
        except UsageError:
            credentials = None  # never brought up: every node is new
        return changes.plan(self.topology, self.engines, credentials)

    def up(
        self,
        *,
        wait: bool = True,
        timeout: float = 180.0,
        reporter: Reporter = quiet_reporter,
        parallel: int = 1,
        switchover: bool = True,
    ) -> UpReport:
        """Create or repair every declared node with its acting role, apply changed settings
        (a reload, or a rolling restart: :mod:`shardctl.ops.rolling`, ``parallel`` shards at
        once), then the ring catalog and the reshard fence on every primary; re-clone the
        former primaries a failover fenced. Bad settings or another major version: exit 2,
        nothing changed."""
        from shardctl.ops import changes
        from shardctl.ops.backup import archiving
        from shardctl.ops.nodes import Action
        from shardctl.ops.rolling import Roller
        from shardctl.ops.up import Provisioner
        from shardctl.state import ddl

        started = time.monotonic()
        self.credentials(create=True)
        record = self._roles_for_up(reporter, started + timeout)
        rejoin = record.rejoin if record is not None else ()
        provisioner = Provisioner(
            self.topology, self.engines, self.credentials(), reporter, rejoin=rejoin
        )
        provisioner.prepare()
        planned = changes.plan(self.topology, self.engines, self.credentials())
        provisioner.keep = frozenset(
            n.node for n in planned.nodes if n.action is changes.Change.RECREATE
        )
        report = provisioner.up(wait=wait, timeout=max(1.0, started + timeout - time.monotonic()))
        work = planned.rolling()
        if work:
            roller = Roller(
                self.topology, self.engines, self.credentials(), reporter, switchover=switchover
            )
            for roll in roller.roll(work, parallel=parallel, timeout=max(60.0, timeout)):
                report.actions.update(roll.nodes)
                report.shards[roll.shard] = roll.summary()
            self.follow_roles()
        reporter("catalog", "ring catalog")
        written = catalog.ensure(self.topology, self.credentials())
        report.warnings += written.warnings
        if record is not None and rejoin:
            catalog.forget_rejoined(
                self.topology, self.credentials(), rejoin, f"up: re-joined {', '.join(rejoin)}"
            )
        ddl.ensure(self.topology, self.credentials())  # the reshard fence, idle until used
        report.warnings += [c.line for c in self.apply_durability()]
        if self.topology.spec.backup is not None:
            reporter("backup", "archiving")
            report.actions[archiving.container_name(self.topology)] = Action(
                archiving.ensure(self.topology, self.engines, self.credentials(), reporter)
            )
        report.seconds = time.monotonic() - started
        return report

    def _roles_for_up(self, reporter: Reporter, deadline: float) -> catalog.RingRecord | None:
        """The catalog's roles before ``up`` changes anything. When no node answers but the
        cluster's containers exist (a restarted host), they are started first: the catalog in
        them says who is primary, and a stopped former primary must not be mistaken for one."""
        try:
            return self.follow_roles()
        except DatabaseUnavailable:
            self._refuse_servers_without_tls()
            if not self.provisioner(reporter).start_existing():
                return None  # nothing exists yet: a new cluster, the declared roles
        return wait_for(
            self._follow_roles_probe,
            timeout=max(1.0, min(60.0, deadline - time.monotonic())),
            what="any node of the cluster to answer",
            on_timeout=DatabaseUnavailable,
        )

    def _refuse_servers_without_tls(self) -> None:
        """``tls: required`` added to a running cluster: its servers answer without TLS, so no
        catalog can be read (and none is read in clear); say how to turn TLS on."""
        if self.topology.tls is None:
            return
        for node in self.topology.primaries():
            try:
                pg.connect(node, self.credentials(), "postgres").close()
            except DatabaseUnavailable as exc:
                if "does not support SSL" in str(exc):
                    raise CheckFailed(
                        f"{node.name} runs without TLS, and the topology now says tls: "
                        "required: run `shardctl down` (the data stays) and then `shardctl up`, "
                        "which starts every node with TLS"
                    ) from None
            return

    def _follow_roles_probe(self) -> catalog.RingRecord | None:
        try:
            return self.follow_roles()
        except DatabaseUnavailable as exc:
            raise NotYet(str(exc)) from None

    def restart(
        self,
        target: str | None = None,
        *,
        parallel: int = 1,
        switchover: bool = True,
        reporter: Reporter = quiet_reporter,
        timeout: float = 600.0,
    ) -> list[ShardRoll]:
        """Rolling restart of the cluster, one shard (``target`` a shard name) or one node:
        replicas first, then a switchover and the former primary (see
        :mod:`shardctl.ops.rolling`)."""
        from shardctl.ops import changes
        from shardctl.ops.rolling import Roller

        self.follow_roles()
        work: dict[str, dict[str, changes.Change]] = {}
        for node in self._targets(target):
            work.setdefault(node.shard, {})[node.name] = changes.Change.RESTART
        roller = Roller(
            self.topology, self.engines, self.credentials(), reporter, switchover=switchover
        )
        done = roller.roll(work, parallel=parallel, timeout=timeout)
        self.follow_roles()
        return done

    def _targets(self, target: str | None) -> list[Node]:
        if target is None:
            return list(self.topology.nodes)
        shards = {s.name for s in self.topology.spec.shards}
        if target in shards:
            return list(self.topology.shard_nodes(target))
        if target in {n.name for n in self.topology.nodes}:
            return [self.topology.node(target)]
        raise UsageError(
            f"{target!r} is neither a shard nor a node of {self.topology.cluster} "
            f"(shards: {', '.join(sorted(shards))})"
        )

    def reinit(self, name: str, *, reporter: Reporter = quiet_reporter) -> UpReport:
        """Re-clone the replica ``name`` from its shard's primary: its container and volume
        are removed and made again; nothing else changes."""
        from shardctl.ops.up import Provisioner

        self.follow_roles()
        if name not in {n.name for n in self.topology.nodes}:
            raise UsageError(f"{name!r} is not a node of {self.topology.cluster}")
        node = self.topology.node(name)
        if node.role is not Role.REPLICA:
            raise UsageError(
                f"{name} is {node.shard}'s primary: move the primary first "
                f"(`shardctl switchover {node.shard}`), then re-initialise it"
            )
        reporter(name, "removing its container and volume")
        self.engines.remove_node(node)
        keep = [n.name for n in self.topology.nodes]
        provisioner = Provisioner(
            self.topology, self.engines, self.credentials(), reporter, keep=keep
        )
        return provisioner.up(wait=True)

    def role_changer(
        self,
        *,
        log: Callable[[str], None] = lambda _: None,
        after_step: Callable[[Step], None] = lambda _: None,
    ) -> RoleChanger:
        """Switchover and failover for this cluster, with the acting roles."""
        from shardctl.ops.rolechange import RoleChanger

        self.follow_roles()
        return RoleChanger(
            self.topology, self.engines, self.credentials(), log=log, after_step=after_step
        )

    def switchover(
        self, shard: str, to: str | None = None, *, timeout: float = 30.0, mode: str = "manual"
    ) -> RoleChange:
        """Planned primary change of ``shard`` (see :mod:`shardctl.ops.rolechange`), recorded
        in the shard's history (``mode``: manual, or automatic for a monitor)."""
        from shardctl.state import history

        self.topology.shard_nodes(shard)  # an unknown shard is a TopologyError, exit 2
        return self._recorded(
            history.SWITCHOVER,
            shard,
            mode,
            lambda: self._archive_after(self.role_changer().switchover(shard, to, timeout=timeout)),
        )

    def failover(self, shard: str, to: str | None = None, *, mode: str = "manual") -> RoleChange:
        """Promote a replica of ``shard``, whose primary is gone (see
        :mod:`shardctl.ops.rolechange`), recorded in the shard's history."""
        from shardctl.state import history

        self.topology.shard_nodes(shard)
        return self._recorded(history.FAILOVER, shard, mode, lambda: self._failover(shard, to))

    def _failover(self, shard: str, to: str | None) -> RoleChange:
        change = self.role_changer().failover(shard, to)
        # The lost host may have carried other shards' standbys: their policy applies now.
        with contextlib.suppress(DatabaseUnavailable):
            change.notes += [c.line for c in self.apply_durability() if c.shard != shard]
        return self._archive_after(change)

    def _archive_after(self, change: RoleChange) -> RoleChange:
        """Point the backup node at the new primary (its slot made there first)."""
        note = self.follow_archiving()
        if note is not None:
            change.notes.append(note)
        return change

    def follow_archiving(self) -> str | None:
        """Re-point the backup node at the acting primaries of the shards declared now (after
        a role change, or a shard removed); a note when it could not be done yet (``up`` does
        it again), None when done or no ``backup:`` is declared."""
        from shardctl.ops.backup import archiving

        if self.topology.spec.backup is None:
            return None
        try:
            self.follow_roles()
            archiving.ensure(self.topology, self.engines, self.credentials())
        except ShardctlError as exc:
            return f"archiving not re-pointed yet: {exc}; run `shardctl up`"
        return None

    def apply_durability(self) -> list[durability.Change]:
        """One pass of the sync durability policy (see :mod:`shardctl.ops.durability`)."""
        from shardctl.ops import durability

        return durability.apply_durability(self)

    def apply_durability_quietly(self, facts: health.ClusterFacts | None = None) -> list[str]:
        """:meth:`apply_durability` for the commands that read (``status``,
        ``verify-replication``), on ``facts`` when just observed (the acting roles followed):
        the change lines, and one line instead of an error when the pass could not be made
        (those commands report what does not answer themselves)."""
        if not self.topology.has_sync():
            return []
        from shardctl.ops import durability

        try:
            if facts is None:
                return [c.line for c in self.apply_durability()]
            changes = durability.apply(self.topology, self.engines, self.credentials, facts=facts)
            return [c.line for c in changes]
        except (InfrastructureError, UsageError) as exc:
            return [] if isinstance(exc, UsageError) else [f"durability policy not applied: {exc}"]

    def observe_applying_durability(self) -> tuple[health.ClusterFacts, list[str]]:
        """``status``'s view: :meth:`observe`, one durability pass on those facts, and the
        facts again if the pass changed anything; with the pass's lines."""
        facts = self.observe()
        lines = self.apply_durability_quietly(facts)
        if lines:
            pg.fresh_sessions()  # the pass reloaded settings: read them in new sessions
            facts = health.observe(self.topology, self.engines, self.credentials)
        return facts, lines

    def _recorded(
        self, kind: str, shard: str, mode: str, change: Callable[[], RoleChange]
    ) -> RoleChange:
        """Run a role change and store what it did (or why it failed) on the shard's primary."""
        from shardctl.state import history

        started, clock = datetime.now(UTC), time.monotonic()
        database = self.topology.spec.database
        try:
            done = change()
        except ShardctlError as exc:
            primary = self.topology.shard_nodes(shard)[0]
            failed = history.Event(
                at=started,
                kind=kind,
                shard=shard,
                detail=f"{shard}: {primary.name} stays primary",
                mode=mode,
                seconds=time.monotonic() - clock,
                outcome=f"failed: {first_line(str(exc))}",
            )
            # The old primary may be the very thing that is gone: a record that cannot be
            # written must not hide why the role change failed.
            with contextlib.suppress(ShardctlError):
                history.record(primary, self.credentials(), database, failed)
            raise
        event = history.Event(
            at=started,
            kind=kind,
            shard=shard,
            detail=f"{shard}: {done.old_primary} -> {done.new_primary}",
            mode=mode,
            seconds=done.seconds,
            write_pause_ms=done.write_pause * 1000 if done.write_pause else None,
        )
        history.record(self.topology.node(done.new_primary), self.credentials(), database, event)
        return done

    def down(self, *, volumes: bool = False) -> DownReport:
        """Remove containers and network; volumes (and generated passwords) only when asked."""
        from shardctl.ops.down import down

        report = down(self.topology, self.engines, volumes=volumes)
        if volumes:
            creds.forget(self.topology)
        return report

    def observe(self, *, timeout: float | None = None) -> health.ClusterFacts:
        """Every node's replication facts, probed in parallel, judged by the acting roles.

        The engines are asked for the containers while the catalog is read (the names do not
        depend on the roles): the Docker SDK loads while the nodes answer."""
        asking = fanout.Background(
            {"engines": partial(health.engine_container_states, self.topology, self.engines)}
        )
        self._follow_roles_if_running()
        containers = asking.join()["engines"]
        if isinstance(containers, BaseException):
            raise containers
        return health.observe(
            self.topology, self.engines, self.credentials, timeout=timeout, containers=containers
        )

    def verify_replication(
        self, limits: HealthSpec | None = None, *, deep: bool = False
    ) -> verify.Report:
        """Every replication check; thresholds from ``limits`` or the topology's health section."""
        from shardctl.health import verify

        limits = limits if limits is not None else self.topology.spec.health
        self._follow_roles_if_running()
        return verify.verify_replication(
            self.topology,
            self.engines,
            self.credentials,
            limits,
            deep=deep,
            free_space=self._repository_free if self.topology.spec.backup else None,
        )

    def _repository_free(self) -> int | None:
        from shardctl.ops.backup.repository import Repository

        return Repository.of(self.topology).free_bytes()

    def _follow_roles_if_running(self) -> None:
        # Nothing answering (or no passwords yet) is for the checks to report, not an error here.
        with contextlib.suppress(DatabaseUnavailable, UsageError):
            self.follow_roles()

    def in_flight(self) -> list[inflight.Operation]:
        """The operations in progress (an unfinished reshard, a role-change fence), read from
        the acting primaries; DatabaseUnavailable when none answers."""
        return inflight.in_flight(self.topology, self.credentials())

    def distribution(self) -> distributions.Distribution:
        """Rows per table and shard against the ring, misplaced and duplicated keys."""
        from shardctl.health import distribution as distributions

        return distributions.measure(self.topology, self.credentials())

    def ring(self) -> ringview.RingReport:
        """The live ring from the catalog: nodes, shares, each primary's epoch."""
        from shardctl.health import ringview

        return ringview.describe(self.topology, self.credentials())

    def rebalancer(
        self, *, rows_per_chunk: int = 50_000, throttle_seconds: float = 0.0
    ) -> Rebalancer:
        """The reshard coordinator for this cluster, copying at this pace."""
        from shardctl.ops.reshard.coordinator import Rebalancer

        return Rebalancer(self, rows_per_chunk=rows_per_chunk, throttle_seconds=throttle_seconds)

    def add_shard(
        self,
        name: str,
        replicas: int,
        *,
        timeout: float,
        reporter: Reporter = quiet_reporter,
        engine: str | None = None,
        replica_engines: Sequence[str] = (),
    ) -> UpReport:
        """Provision a new empty shard and record it in the topology file (it owns no keys)."""
        from shardctl.ops.reshard import joining

        return joining.add_shard(
            self,
            name,
            replicas,
            timeout=timeout,
            reporter=reporter,
            engine=engine,
            replica_engines=replica_engines,
        )

    def removal_moves_keys(self, rebalancer: Rebalancer, name: str) -> bool:
        """Whether removing ``name`` now has keys to move (UsageError when it cannot go)."""
        from shardctl.ops.reshard import leaving

        return leaving.prepare(rebalancer, name, resume=False)[1]

    def remove_shard(
        self,
        rebalancer: Rebalancer,
        name: str,
        *,
        keep_volumes: bool,
        resume: bool = False,
        plan: Plan | None = None,
    ) -> Removal:
        """Move ``name``'s keys away, then remove its nodes and topology entry (see
        :func:`shardctl.ops.reshard.leaving.remove_shard`); hold ``rebalancer.exclusive()``."""
        from shardctl.ops.reshard import leaving

        return leaving.remove_shard(
            self, rebalancer, name, keep_volumes=keep_volumes, resume=resume, plan=plan
        )

    def monitor_view(self) -> monitor.View:
        """``shardctl monitor``'s heartbeats and automatic failovers, as the cluster holds
        them (nothing when no node answers)."""
        return monitor.read_view(self.topology, self.credentials())

    def close(self) -> None:
        """Release Docker clients."""
        self.engines.close()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
