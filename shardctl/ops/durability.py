"""Apply the durability policy of ``replication: sync`` shards (decided by
:func:`shardctl.health.durability.decide`).

:func:`apply_durability` is one pass: observe every node, read the durability records, decide,
then for each shard whose primary answered

1. keep its record up to date on every primary that answers (written *before* a primary
   degrades, so a later failover can say which writes may lack a standby; deleted once a
   standby streams, caught up, again);
2. set its primary's ``synchronous_standby_names`` by ``ALTER SYSTEM`` and
   ``pg_reload_conf()`` where the decision differs from what it has: empty while a
   ``preferred`` shard is degraded, the shard's standbys otherwise.

Who runs it: ``shardctl monitor`` on every pass (issue 26), and, so that something acts when
nobody runs the monitor, ``up``, ``failover``, ``status`` and ``verify-replication`` once each
when they run (docs/failover.md). A topology without a sync shard costs nothing: no pass is
made. Every statement has a deadline and every write commits locally.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from shardctl.config.credentials import Credentials
from shardctl.config.topology import Node, Topology
from shardctl.db import pg
from shardctl.docker.engine import Engines
from shardctl.errors import DatabaseUnavailable
from shardctl.health import durability as policy
from shardctl.health import facts as health
from shardctl.state import durability as records

if TYPE_CHECKING:
    from shardctl.ops.cluster import Cluster

TIMEOUT = 5.0
"""Seconds each connection and statement of a pass may take."""


@dataclass(frozen=True)
class Change:
    """One thing a pass changed on a shard's primary."""

    shard: str
    primary: str
    state: policy.State
    """What the shard is now: degraded (acknowledging as async) or synchronous again."""
    standby_names: str
    """The primary's ``synchronous_standby_names`` now."""
    line: str
    """The change in one line, for people."""


def apply_durability(cluster: Cluster) -> list[Change]:
    """One pass of the durability policy over ``cluster`` with its acting roles (what the
    monitor calls each pass); the changes made, none when nothing needed changing.

    Primaries that do not answer are left alone; a primary that fails while being changed is
    a DatabaseUnavailable naming it.
    """
    if not cluster.topology.has_sync():
        return []
    cluster.follow_roles()
    return apply(cluster.topology, cluster.engines, cluster.credentials)


def apply(
    topology: Topology,
    engines: Engines,
    credentials: Callable[[], Credentials],
    *,
    facts: health.ClusterFacts | None = None,
    now: Callable[[], float] = time.time,
) -> list[Change]:
    """:func:`apply_durability` on a topology that already has its acting roles (``facts``:
    observed just now, else observed here)."""
    if not topology.has_sync():
        return []
    if facts is None:
        facts = health.observe(topology, engines, credentials, timeout=TIMEOUT)
    answering = [
        p
        for p in topology.primaries()
        if (found := facts.of(p.name).facts) is not None and not found.in_recovery
    ]
    if not answering:
        return []
    login = credentials()
    known, _ = records.read_all(topology, login, answering, timeout=TIMEOUT)
    decisions = policy.decide(topology, facts, known, now())
    keep = [d.record for d in decisions if d.record is not None and d.record != known.get(d.shard)]
    drop = [
        d.shard
        for d in decisions
        if d.record is None and d.state is not policy.State.UNKNOWN and d.shard in known
    ]
    # Recorded before any primary degrades: a failover must be able to find it.
    _on_primaries(topology, login, answering, lambda c: records.store(c, keep, drop))
    changes = []
    for decision in decisions:
        if decision.resets_setting and decision.standby_names is not None:
            node = topology.node(decision.primary)
            set_standby_names(node, login, decision.standby_names)
            changes.append(_change(decision))
    return changes


def _on_primaries(
    topology: Topology,
    credentials: Credentials,
    primaries: list[Node],
    work: Callable[[psycopg.Connection[Any]], None],
) -> None:
    pg.on_nodes(
        topology,
        credentials,
        primaries,
        work,
        timeout=TIMEOUT,
        strict=False,  # a primary lost since it was observed is the next pass's business
        doing=f"writing the {records.DOING}",
        deadline=TIMEOUT,
    )


def set_standby_names(node: Node, credentials: Credentials, names: str) -> None:
    """Make ``node`` wait for ``names`` before acknowledging a commit (a reload)."""
    with (
        pg.node_errors(node, "setting synchronous_standby_names"),
        pg.connect(
            node, credentials, "postgres", timeout=TIMEOUT, local_commit=True, deadline=TIMEOUT
        ) as conn,
    ):
        conn.execute(
            sql.SQL("ALTER SYSTEM SET synchronous_standby_names = {}").format(sql.Literal(names))
        )
        conn.execute("SELECT pg_catalog.pg_reload_conf()")


def degrade_now(
    topology: Topology, credentials: Credentials, shard: str, missing: tuple[str, ...]
) -> Change:
    """Make a ``preferred`` shard's acting primary acknowledge as async at once, recorded (a
    failover that promoted its only usable replica: no standby can come back before ``up``
    re-clones one, so there is nothing to wait for)."""
    primary = topology.shard_nodes(shard)[0]
    moment = time.time()
    record = records.Record(shard, moment, moment, missing)
    answering = []
    for node in topology.primaries():
        try:
            pg.connect(node, credentials, "postgres", timeout=TIMEOUT, deadline=TIMEOUT).close()
        except DatabaseUnavailable:
            continue
        answering.append(node)
    _on_primaries(topology, credentials, answering, lambda c: records.store(c, [record], []))
    set_standby_names(primary, credentials, "")
    detail = policy.degraded_detail(missing, moment)
    return Change(shard, primary.name, policy.State.DEGRADED, "", f"{shard}: {detail}")


def _change(decision: policy.Decision) -> Change:
    names = decision.standby_names or ""
    if decision.state is policy.State.DEGRADED:
        line = f"{decision.shard}: {decision.detail}"
    elif decision.state is policy.State.SYNCHRONOUS:
        line = f"{decision.shard}: sync restored on {decision.primary} ({decision.detail})"
    else:
        line = (
            f"{decision.shard}: {decision.primary} now waits for {names or 'no standby'} "
            f"({decision.state.value})"
        )
    return Change(decision.shard, decision.primary, decision.state, names, line)
