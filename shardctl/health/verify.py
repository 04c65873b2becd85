"""``verify-replication``: observe once, judge the facts, then prove replication end to end.

1. :func:`shardctl.health.facts.observe` probes every node in parallel (the facts ``status`` shows);
   :func:`shardctl.health.checks.replication_checks` judges them.
2. The canary: every answering primary commits one row to ``shardctl.replication_canary`` in
   the topology's database, and every answering replica is polled until that row is visible,
   all at once; how long it took is the check's ``seconds``.
3. With ``deep``: per sharded table, the primary's row count and checksum are read in one
   REPEATABLE READ snapshot together with its WAL position; each replica is compared once it
   has replayed past that position. A mismatch is re-measured twice before it is reported, so
   writes that land between the two reads do not fail a healthy replica.

Nodes that did not answer the probe are not contacted again (their checks are skipped), so a
hung node costs the probe timeout once and never stalls the canary or deep checks of others.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from shardctl.config.credentials import Credentials
from shardctl.config.schema import FailoverMode, HealthSpec, Role, TableSpec
from shardctl.config.topology import Node, Topology
from shardctl.db import digest, pg
from shardctl.docker.engine import Engines
from shardctl.errors import DatabaseUnavailable
from shardctl.health import checks, measured
from shardctl.health import facts as health
from shardctl.health.archiving import FreeSpace, archiving_checks
from shardctl.health.checks import Check
from shardctl.state import monitor as kept
from shardctl.util import fanout
from shardctl.util.text import lsn_text
from shardctl.util.waiting import NotYet, retrying, wait_for

CANARY_SCHEMA = "shardctl"
CANARY_TABLE = "replication_canary"
CANARY_KEEP = "1 hour"
"""Canary rows older than this are deleted by the next write; concurrent runs keep theirs."""
DEEP_ATTEMPTS = 3
DEEP_KEY_LOOKUP_ROWS = 100_000
"""A mismatching table this small has its differing keys named (both sides are read whole)."""
DEEP_TIMEOUT = 3600.0
"""Upper bound for checksumming every table of a shard (a guard against a hung node only)."""
DEEP_DEADLINE = 600.0
"""Seconds one checksum query of one table may take (a frozen node fails its table)."""

Conn = psycopg.Connection[Any]


@dataclass(frozen=True)
class Report:
    """What ``verify-replication`` found, in topology order."""

    cluster: str
    checks: tuple[Check, ...]
    limits: HealthSpec
    deep: bool
    seconds: float
    answered: int
    """Nodes that answered the probe; 0 means the cluster is unreachable."""

    @property
    def ok(self) -> bool:
        """True when every check passed (skipped ones do not count)."""
        return checks.all_passed(self.checks)

    @property
    def failures(self) -> list[Check]:
        """The failed checks."""
        return [c for c in self.checks if not c.ok]


def verify_replication(
    topology: Topology,
    engines: Engines,
    credentials: Callable[[], Credentials],
    limits: HealthSpec,
    *,
    deep: bool = False,
    free_space: FreeSpace | None = None,
) -> Report:
    """Run every replication check (and ``deep`` table comparisons) against the live cluster;
    ``free_space`` reads the backup repository's room, to name a full one."""
    started = time.monotonic()
    facts = health.observe(topology, engines, credentials, timeout=limits.probe_timeout)
    found = checks.replication_checks(facts, limits)
    answered = [o for o in facts.nodes if o.facts is not None]
    login = credentials() if answered else None
    found += canary_checks(facts, login, limits)
    found += archiving_checks(topology, login, limits, free_space)
    if deep:
        found += deep_checks(facts, login, limits)
    found += monitor_checks(topology, login, limits)
    return Report(
        cluster=topology.cluster,
        checks=tuple(checks.sort_checks(topology, found)),
        limits=limits,
        deep=deep,
        seconds=time.monotonic() - started,
        answered=len(answered),
    )


# ------------------------------------------------------------------- the monitor


def monitor_checks(
    topology: Topology, login: Credentials | None, limits: HealthSpec
) -> list[Check]:
    """Each ``failover: automatic`` shard needs a live ``shardctl monitor``: one whose
    heartbeat in the catalog is younger than ``limits.monitor_stale_seconds``."""
    automatic = [
        s.name
        for s in topology.spec.shards
        if topology.failover(s.name).mode is FailoverMode.AUTOMATIC
    ]
    if not automatic or login is None:
        return []
    view = kept.read_view(topology, login)
    last, limit = view.last_seen, limits.monitor_stale_seconds
    found: list[Check] = []
    for shard in automatic:
        node = topology.shard_nodes(shard)[0]
        if last is None:
            found.append(
                checks.failed(
                    node, "monitor", "failover: automatic, but no `shardctl monitor` ever ran"
                )
            )
        elif last > limit:
            found.append(
                checks.failed(
                    node,
                    "monitor",
                    f"failover: automatic, but no `shardctl monitor` seen for {last:.0f}s "
                    f"(limit {limit:g}s)",
                )
            )
        else:
            found.append(checks.passed(node, "monitor", f"monitor seen {last:.1f}s ago"))
    return found


# ------------------------------------------------------------------- canary


@dataclass(frozen=True)
class _Written:
    token: uuid.UUID
    acked: float
    """``time.monotonic()`` when the commit was acknowledged."""


def canary_checks(
    facts: health.ClusterFacts, login: Credentials | None, limits: HealthSpec
) -> list[Check]:
    """Write a canary on every primary and time its arrival on every replica, all at once."""
    topology = facts.topology
    database = topology.spec.database
    written: dict[str, Future[_Written]] = {}
    tasks: dict[str, Callable[[], Check]] = {}
    results: list[Check] = []
    for obs in facts.nodes:
        node = obs.node
        if node.role is Role.PRIMARY:
            written[node.name] = Future()
        if login is None or obs.facts is None:
            results.append(checks.skipped(node, checks.CANARY, f"{node.name} did not answer"))
        elif node.role is Role.REPLICA and not obs.facts.in_recovery:
            results.append(checks.skipped(node, checks.CANARY, "not in recovery"))
        elif node.role is Role.PRIMARY:
            tasks[node.name] = _write_canary(node, login, database, limits, written[node.name])
        else:
            tasks[node.name] = _await_canary(
                node, login, database, limits, written[node.primary_name]
            )
    for name, future in written.items():
        if name not in tasks:  # its primary did not answer: its replicas need not wait
            future.set_exception(DatabaseUnavailable(f"{name} did not answer"))
    # A replica's wait is bounded by its own deadline; the margin covers connecting.
    budget = 2 * limits.probe_timeout + limits.canary_timeout + 1.0
    for name, outcome in fanout.gather(tasks, timeout=budget).items():
        node = topology.node(name)
        if isinstance(outcome, Check):
            results.append(outcome)
        else:
            results.append(checks.failed(node, checks.CANARY, pg.failure_reason(outcome)))
    return results


def _write_canary(
    node: Node, login: Credentials, database: str, limits: HealthSpec, out: Future[_Written]
) -> Callable[[], Check]:
    def run() -> Check:
        token = uuid.uuid4()
        started = time.monotonic()
        try:
            # Bounded by the canary's timeout: a sync primary without a standby never commits it.
            with pg.connect(
                node, login, database, timeout=limits.probe_timeout, deadline=limits.canary_timeout
            ) as conn:
                if not _canary_exists(conn):  # the first run on this primary
                    _ensure_canary_table(conn)
                _insert_canary(conn, token, node)
                acked = time.monotonic()
                out.set_result(_Written(token, acked))  # replicas start looking now
        except (psycopg.Error, DatabaseUnavailable) as exc:
            if not out.done():
                out.set_exception(exc)
                return measured.canary_primary_check(node, None, pg.failure_reason(exc))
        return measured.canary_primary_check(node, acked - started, None)

    return run


def _insert_canary(conn: Conn, token: uuid.UUID, node: Node) -> None:
    """Commit this run's canary row, deleting old ones in the same transaction."""
    with conn.transaction():
        conn.execute(
            sql.SQL("DELETE FROM {} WHERE written_at < pg_catalog.now() - %s::interval").format(
                _canary_table()
            ),
            (CANARY_KEEP,),
        )
        conn.execute(
            sql.SQL("INSERT INTO {} (token, node) VALUES (%s, %s)").format(_canary_table()),
            (token, node.name),
        )


def _ensure_canary_table(conn: Conn) -> None:
    """Create the canary table if missing; a concurrent creator may win the race."""
    statement = sql.SQL(
        "CREATE SCHEMA IF NOT EXISTS {schema}; "
        "CREATE TABLE IF NOT EXISTS {table} ("
        " token uuid PRIMARY KEY,"
        " node text NOT NULL,"
        " written_at timestamptz NOT NULL DEFAULT pg_catalog.now())"
    ).format(schema=sql.Identifier(CANARY_SCHEMA), table=_canary_table())
    retrying(
        lambda: conn.execute(statement),
        retry_on=(psycopg.errors.UniqueViolation, psycopg.errors.DuplicateObject),
        attempts=3,
    )


def _canary_exists(conn: Conn) -> bool:
    """Whether the canary table exists (asked without an error in the server log)."""
    row = conn.execute(
        "SELECT pg_catalog.to_regclass(%s) IS NOT NULL", (f"{CANARY_SCHEMA}.{CANARY_TABLE}",)
    ).fetchone()
    return bool(row and row[0])


def _canary_table() -> sql.Composed:
    return sql.SQL(".").join([sql.Identifier(CANARY_SCHEMA), sql.Identifier(CANARY_TABLE)])


def _await_canary(
    node: Node, login: Credentials, database: str, limits: HealthSpec, written: Future[_Written]
) -> Callable[[], Check]:
    def run() -> Check:
        # Connect before the write lands, so the measured time is replication, not a handshake.
        with pg.connect(node, login, database, timeout=limits.probe_timeout) as conn:
            try:
                canary = written.result(timeout=limits.probe_timeout + 1.0)
            except Exception as exc:
                return checks.skipped(
                    node, checks.CANARY, f"no canary written on {node.primary_name} ({exc})"
                )
            query = sql.SQL("SELECT 1 FROM {} WHERE token = %s").format(_canary_table())

            def probe() -> float:
                # Asked first, not caught: a failed query would log an ERROR on the server.
                if not _canary_exists(conn):
                    raise NotYet("canary table not replayed yet")
                row = conn.execute(query, (canary.token,)).fetchone()
                seen = time.monotonic()
                if row is None:
                    raise NotYet("canary row not replayed yet")
                return max(0.0, seen - canary.acked)

            remaining = canary.acked + limits.canary_timeout - time.monotonic()
            try:
                seconds = wait_for(
                    probe,
                    timeout=max(0.0, remaining),
                    what=f"the canary from {node.primary_name}",
                    on_timeout=TimeoutError,
                    interval=0.002,
                    max_interval=0.05,
                )
            except TimeoutError:
                return measured.canary_check(node, None, None, limits)
            return measured.canary_check(node, seconds, None, limits)

    return run


# --------------------------------------------------------------------- deep


def deep_checks(
    facts: health.ClusterFacts, login: Credentials | None, limits: HealthSpec
) -> list[Check]:
    """Compare row counts and checksums of every sharded table, primary against replicas."""
    topology = facts.topology
    tables = topology.spec.tables
    results: list[Check] = []
    tasks: dict[str, Callable[[], list[Check]]] = {}
    for shard in topology.spec.shards:
        primary, *replicas = topology.shard_nodes(shard.name)
        primary_obs = facts.of(primary.name)
        live: list[Node] = []
        for replica in replicas:
            obs = facts.of(replica.name)
            if login is None or obs.facts is None:
                why = f"{replica.name} did not answer"
                results += [checks.skipped(replica, measured.deep_name(t), why) for t in tables]
            elif primary_obs.facts is None:
                why = f"{primary.name} did not answer"
                results += [checks.skipped(replica, measured.deep_name(t), why) for t in tables]
            else:
                live.append(replica)
        if live and login is not None:
            tasks[shard.name] = _deep_shard(primary, live, tables, login, topology, limits)
    for shard_name, outcome in fanout.gather(tasks, timeout=DEEP_TIMEOUT).items():
        if isinstance(outcome, BaseException):  # the primary could not be read at all
            primary, *replicas = topology.shard_nodes(shard_name)
            why = f"{primary.name} could not be read"
            for table in tables:
                results.append(
                    checks.failed(primary, measured.deep_name(table), pg.failure_reason(outcome))
                )
                results += [checks.skipped(r, measured.deep_name(table), why) for r in replicas]
        else:
            results += outcome
    return results


def _deep_shard(
    primary: Node,
    replicas: list[Node],
    tables: tuple[TableSpec, ...],
    login: Credentials,
    topology: Topology,
    limits: HealthSpec,
) -> Callable[[], list[Check]]:
    database = topology.spec.database

    def run() -> list[Check]:
        found: list[Check] = []
        with pg.connect(
            primary, login, database, timeout=limits.probe_timeout, deadline=DEEP_DEADLINE
        ) as source:
            digest.prepare(source)
            targets: dict[str, Conn] = {}
            try:
                for replica in replicas:
                    try:
                        conn = pg.connect(
                            replica,
                            login,
                            database,
                            timeout=limits.probe_timeout,
                            deadline=DEEP_DEADLINE,
                        )
                        digest.prepare(conn)
                    except (DatabaseUnavailable, psycopg.Error) as exc:
                        found += [
                            checks.failed(replica, measured.deep_name(t), pg.failure_reason(exc))
                            for t in tables
                        ]
                        continue
                    targets[replica.name] = conn
                live = [r for r in replicas if r.name in targets]
                for table in tables:
                    if live:
                        found += _compare_table(source, primary, targets, live, table, limits)
            finally:
                for conn in targets.values():
                    conn.close()
        return found

    return run


def _compare_table(
    source: Conn,
    primary: Node,
    targets: dict[str, Conn],
    replicas: list[Node],
    table: TableSpec,
    limits: HealthSpec,
) -> list[Check]:
    """Compare one table on every replica; re-measure a mismatch up to DEEP_ATTEMPTS times."""
    name = measured.deep_name(table)
    pending = list(replicas)
    found: dict[str, Check] = {}
    mismatched: dict[str, tuple[measured.TableDigest, measured.TableDigest, str]] = {}
    for _ in range(DEEP_ATTEMPTS):
        try:
            digest, lsn = _primary_digest(source, table)
        except psycopg.Error as exc:
            why = f"{primary.name} could not be read"
            return [
                checks.failed(primary, name, pg.first_line(exc)),
                *(checks.skipped(r, name, why) for r in replicas),
            ]
        mismatched.clear()
        for replica in pending:
            conn = targets[replica.name]
            try:
                at = _await_replay(conn, lsn, limits.canary_timeout)
                theirs = _digest(conn, table)
            except TimeoutError as exc:
                found[replica.name] = checks.failed(replica, name, str(exc))
                continue
            except psycopg.Error as exc:
                found[replica.name] = checks.failed(replica, name, pg.first_line(exc))
                continue
            found[replica.name] = measured.deep_check(replica, table, digest, theirs, at=at)
            if theirs != digest:
                mismatched[replica.name] = (digest, theirs, at)
        pending = [r for r in pending if not found[r.name].ok]
        if not pending:
            break
    for replica in replicas:
        if replica.name in mismatched:
            mine, theirs, at = mismatched[replica.name]
            keys = _differing_keys(source, targets[replica.name], table, mine, theirs)
            found[replica.name] = measured.deep_check(
                replica, table, mine, theirs, at=at, keys=keys
            )
    return [found[r.name] for r in replicas]


def _differing_keys(
    source: Conn,
    target: Conn,
    table: TableSpec,
    mine: measured.TableDigest,
    theirs: measured.TableDigest,
) -> list[str] | None:
    """Name some differing keys, reading key → row hash on both sides; None for big tables."""
    if max(mine.rows, theirs.rows) > DEEP_KEY_LOOKUP_ROWS:
        return None
    try:
        primary = digest.row_hashes(source, table)
        replica = digest.row_hashes(target, table)
    except psycopg.Error:
        return None
    return measured.differing_keys(primary, replica)


def _digest(conn: Conn, table: TableSpec) -> measured.TableDigest:
    # The same checksum the resharding verification uses (shardctl.db.digest).
    row = conn.execute(digest.checksum_query(table)).fetchone()
    assert row is not None
    return measured.TableDigest(int(row[0]), int(row[1]))


def _primary_digest(conn: Conn, table: TableSpec) -> tuple[measured.TableDigest, int]:
    """The table's digest in one snapshot, and a WAL position past every commit it saw."""
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        digest = _digest(conn, table)
        # Read after the snapshot was taken: every commit it sees ends before this position.
        row = conn.execute(
            "SELECT pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), '0/0')::bigint"
        ).fetchone()
    assert row is not None
    return digest, int(row[0])


def _await_replay(conn: Conn, lsn: int, timeout: float) -> str:
    """Wait until the replica replayed past ``lsn``; say at which point it is compared."""

    def probe() -> str:
        row = conn.execute(
            "SELECT pg_catalog.pg_is_in_recovery(), "
            "pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_last_wal_replay_lsn(), '0/0')::bigint"
        ).fetchone()
        assert row is not None
        in_recovery, replayed = row
        if not in_recovery:
            return "while out of recovery"
        if replayed is None or int(replayed) < lsn:
            raise NotYet(f"replayed up to {lsn_text(replayed)}, waiting for {lsn_text(lsn)}")
        return f"at {lsn_text(lsn)}"

    return wait_for(
        probe,
        timeout=timeout,
        what="the replica to replay the primary's snapshot",
        on_timeout=lambda detail: TimeoutError(f"not compared: {detail}"),
        interval=0.005,
        max_interval=0.1,
    )
