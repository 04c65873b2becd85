"""The ledger: every acknowledged write of a load run, so the data can be verified afterwards.

A ledger is a JSON-lines file. The first line is a header naming the table written (from the
topology), its key and the value columns (from the catalog); every other line is one write.
With the example schema's ``users``::

    {"ledger": 1, "table": "users", "key": "id", "key_type": "uuid",
     "columns": ["first_name", "last_name", "email"], "started_at": "2026-...Z"}
    {"seq": 1, "worker": 0, "key": "6f1c...", "op": "insert",
     "value": {"first_name": "first_name-3a9c...", "last_name": ..., "email": ...}, "ok": true}
    {"seq": 2, "worker": 0, "key": "6f1c...", "op": "update", "value": {...}, "ok": true, "rows": 1}
    {"seq": 3, "worker": 0, "key": "6f1c...", "op": "delete", "value": null, "ok": true, "rows": 1}

- ``op`` is ``insert`` (an upsert of the whole value), ``update`` (sets every column in
  ``columns``) or ``delete``; ``value`` is the row's full state *after* the op (null: absent).
  Reads change nothing and are not recorded.
- ``ok: true`` means acknowledged (committed); ``ok: false`` means the op raised, so its
  outcome is unknown (a commit whose reply was lost): both the state before it and after it
  are then acceptable, until a later acknowledged op on the key settles it. A writer stops
  touching a key after a failed op.
- Each key belongs to one writer, which writes its ops in order, so the lines of one key are in
  the order the ops happened, and the expected final state of every key is well defined.

Any writer can produce one (:class:`Ledger` is thread-safe); :func:`verify` checks one or
more ledgers against the cluster: each key's final state on its ring owner's primary against
the acceptable states, and its absence from every other shard.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import IO, Any

import psycopg
from psycopg import sql

from shardctl.errors import UsageError
from shardctl.router.router import Router
from shardctl.util import fanout

VERSION = 1
WRITE_OPS = ("insert", "update", "delete")
BATCH = 5000
LINES_AT_ONCE = 256
"""Lines a ledger collects before it writes them to its file's buffer in one call."""
_encode = json.JSONEncoder(separators=(",", ":")).encode
_string: Callable[[str], str] = json.encoder.encode_basestring_ascii
"""A JSON string, as json.dumps writes it (ASCII, escaped)."""


def _object(value: Value | None) -> str:
    """``value`` as json.dumps writes it with compact separators."""
    if value is None:
        return "null"
    if not all(type(v) is str or v is None for v in value.values()):
        return _encode(value)
    pairs = (f"{_string(k)}:{'null' if v is None else _string(v)}" for k, v in value.items())
    return "{" + ",".join(pairs) + "}"


Value = dict[str, str | None]


@dataclass(frozen=True)
class Header:
    """A ledger's first line: the table written, its key and the value columns recorded."""

    table: str
    key: str
    key_type: str
    """The key column's SQL type, as ``information_schema`` spells it (``uuid``, ``bigint``)."""
    columns: tuple[str, ...]


class Ledger:
    """Appends writes to a ledger file, one JSON line each; safe to share between threads."""

    def __init__(self, path: Path | str, header: Header) -> None:
        """Create (truncate) ``path`` and write the header line."""
        self.path = Path(path)
        self._lock = threading.Lock()
        self._seq = 0
        self._lines: list[str] = []
        """Lines recorded and not yet handed to ``_out`` (see :data:`LINES_AT_ONCE`)."""
        self._out: IO[str] = self.path.open("w", encoding="utf-8", buffering=1 << 16)
        line = {
            "ledger": VERSION,
            "table": header.table,
            "key": header.key,
            "key_type": header.key_type,
            "columns": list(header.columns),
            "started_at": datetime.now(UTC).isoformat(),
        }
        self._out.write(json.dumps(line) + "\n")

    def record(
        self,
        worker: int,
        key: object,
        op: str,
        value: Value | None,
        *,
        ok: bool = True,
        rows: int | None = None,
    ) -> None:
        """Append one write: ``value`` is the row after it (None when absent)."""
        # The line json.dumps of the entry's dict would write, with no dict built and only the
        # strings and the value run through the encoder: a load run records every write.
        tail = "}\n" if rows is None else f',"rows":{int(rows)}}}\n'
        body = (
            f'"worker":{int(worker)},"key":{_string(str(key))},"op":{_string(op)},'
            f'"value":{_object(value)},"ok":{"true" if ok else "false"}{tail}'
        )
        with self._lock:
            self._seq += 1
            self._lines.append(f'{{"seq":{self._seq},{body}')
            if len(self._lines) >= LINES_AT_ONCE:
                self._write()

    def _write(self) -> None:
        """(Under the lock.) Hand the lines recorded so far to the file's buffer."""
        self._out.write("".join(self._lines))
        self._lines.clear()

    def record_many(self, worker: int, items: Iterable[tuple[object, Value]]) -> None:
        """Append acknowledged inserts in bulk (the bulk loader, after a chunk commits)."""
        with self._lock:
            self._write()
            lines = []
            for key, value in items:
                self._seq += 1
                entry = {
                    "seq": self._seq,
                    "worker": worker,
                    "key": str(key),
                    "op": "insert",
                    "value": value,
                    "ok": True,
                }
                lines.append(json.dumps(entry, separators=(",", ":")))
            if lines:
                self._out.write("\n".join(lines) + "\n")

    def flush(self) -> None:
        """Push buffered lines to the file."""
        with self._lock:
            self._write()
            self._out.flush()

    def close(self) -> None:
        """Flush and close the file."""
        with self._lock:
            if not self._out.closed:
                self._write()
                self._out.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ------------------------------------------------------------------ reading


@dataclass
class Expected:
    """The acceptable final states of one key (None: absent)."""

    states: list[Value | None]
    ops: int = 0

    @property
    def certain(self) -> bool:
        """True when exactly one final state is acceptable."""
        return len(self.states) == 1


def read(paths: Sequence[Path | str]) -> tuple[Header, dict[str, Expected]]:
    """Replay ledgers into each key's acceptable final states (see the module doc)."""
    header: Header | None = None
    expected: dict[str, Expected] = {}
    for path in paths:
        for number, entry in _lines(Path(path)):
            if "ledger" in entry:
                found = _header(entry, f"{path}:{number}")
                if header is not None and found != header:
                    raise UsageError(f"{path}:{number}: ledger header differs from {paths[0]}")
                header = found
                continue
            try:
                key, op, ok = str(entry["key"]), str(entry["op"]), bool(entry["ok"])
                value = entry.get("value")
            except (KeyError, TypeError):
                raise UsageError(f"{path}:{number}: not a ledger entry") from None
            if op not in WRITE_OPS:
                raise UsageError(f"{path}:{number}: unknown op {op!r}")
            after: Value | None = None if op == "delete" else _value(value)
            slot = expected.get(key)
            if slot is None:
                # Before its first recorded op a key is absent (each key belongs to one writer).
                slot = expected[key] = Expected(states=[None])
            slot.ops += 1
            if ok:
                slot.states = [after]
            elif after not in slot.states:
                slot.states.append(after)
    if header is None:
        raise UsageError(f"{paths[0]}: no ledger header (its first line names the table)")
    return header, expected


def _header(entry: dict[str, Any], where: str) -> Header:
    try:
        table, key, key_type = str(entry["table"]), str(entry["key"]), str(entry["key_type"])
        columns = tuple(str(c) for c in entry["columns"])
    except (KeyError, TypeError):
        raise UsageError(
            f"{where}: a ledger header names table, key, key_type and columns"
        ) from None
    return Header(table, key, key_type, columns)


def _lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        handle = path.open(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read ledger {path}: {exc.strerror}") from None
    with handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                if not line.endswith("\n"):
                    break  # a torn last line (the writer was killed): ignore it
                raise UsageError(f"{path}:{number}: not JSON") from None
            if not isinstance(entry, dict):
                raise UsageError(f"{path}:{number}: not a JSON object")
            yield number, entry


def _value(value: object) -> Value:
    if not isinstance(value, dict):
        raise UsageError(f"ledger value must be an object, got {value!r}")
    return {str(k): (None if v is None else str(v)) for k, v in value.items()}


# ------------------------------------------------------------------ verifying


@dataclass(frozen=True)
class Finding:
    """One key whose stored state is not acceptable."""

    key: str
    problem: str
    """``lost`` (acknowledged, absent on its owner), ``stale`` (an older or other value),
    ``resurrected`` (deleted, present on its owner) or ``misplaced`` (on a non-owner shard)."""
    shard: str
    expected: list[Value | None]
    actual: Value | None


@dataclass
class VerifyReport:
    """What :func:`verify` found."""

    keys: int = 0
    ops: int = 0
    present: int = 0
    """Keys expected present (and certain)."""
    absent: int = 0
    """Keys expected absent (deleted, and certain)."""
    uncertain: int = 0
    """Keys whose last op failed, so more than one state is acceptable."""
    lost: int = 0
    stale: int = 0
    resurrected: int = 0
    misplaced: int = 0
    findings: list[Finding] = field(default_factory=list)
    """The first problems found, for the report (all are counted)."""

    @property
    def ok(self) -> bool:
        """True when every key is in an acceptable state, on its owner only."""
        return not (self.lost or self.stale or self.resurrected or self.misplaced)


MAX_FINDINGS = 20


def verify(router: Router, paths: Sequence[Path | str]) -> VerifyReport:
    """Check ledgers against the cluster: each key's state on its owner, and nowhere else."""
    header, expected = read(paths)
    report = VerifyReport(keys=len(expected), ops=sum(e.ops for e in expected.values()))
    keys = list(expected)
    actual = _fetch(router, header, keys)  # key -> {shard: value}
    routing = router.routing
    for key, want in expected.items():
        owner = routing.owner(key)
        stored = actual.get(key, {})
        if not want.certain:
            report.uncertain += 1
        elif want.states[0] is None:
            report.absent += 1
        else:
            report.present += 1
        have = stored.get(owner)
        if have not in want.states:
            if have is None:
                problem = "lost"
            elif want.states == [None]:
                problem = "resurrected"
            else:
                problem = "stale"
            setattr(report, problem, getattr(report, problem) + 1)
            _note(report, Finding(key, problem, owner, want.states, have))
        for shard, value in stored.items():
            if shard != owner:
                report.misplaced += 1
                _note(report, Finding(key, "misplaced", shard, want.states, value))
    return report


def _note(report: VerifyReport, finding: Finding) -> None:
    if len(report.findings) < MAX_FINDINGS:
        report.findings.append(finding)


def _fetch(router: Router, header: Header, keys: list[str]) -> dict[str, dict[str, Value]]:
    """Every ledger key's row on every declared primary: key -> shard -> value."""
    columns = sql.SQL(", ").join(sql.Identifier(c) for c in header.columns)
    key = sql.Identifier(header.key)
    query = sql.SQL("SELECT {key}::text, {columns} FROM {table} WHERE {key} = ANY(%s)").format(
        key=key, columns=columns, table=sql.Identifier(header.table)
    )
    native = [_native(k, header.key_type) for k in keys]
    primaries = router.topology.primaries()

    def on(shard: str) -> list[tuple[Any, ...]]:
        rows: list[tuple[Any, ...]] = []
        for start in range(0, len(native), BATCH):
            chunk = native[start : start + BATCH]

            def select(conn: psycopg.Connection[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
                return conn.execute(query, (chunk,)).fetchall()  # noqa: B023 (used at once)

            rows += router.on_shard(shard, select)
        return rows

    found: dict[str, dict[str, Value]] = {}
    for shard, rows in fanout.each({p.shard: partial(on, p.shard) for p in primaries}).items():
        for row in rows:
            value = {
                c: (None if v is None else str(v))
                for c, v in zip(header.columns, row[1:], strict=True)
            }
            found.setdefault(str(row[0]), {})[shard] = value
    return found


def _native(key: str, key_type: str) -> object:
    if key_type == "uuid":
        return uuid.UUID(key)
    if key_type in ("int", "smallint", "integer", "bigint"):
        return int(key)
    return key
