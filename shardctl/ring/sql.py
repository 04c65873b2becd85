"""The ring on the server: SQL for a key's position, a range of the circle and a key's owner.

The contract (see :mod:`shardctl.ring.hashing`): a key's position is ``md5(key::text)``, 32
lowercase hex digits that compare like the 128-bit integers they spell. Comparisons are made under
``COLLATE "C"`` so that no database locale can reorder them. Every value (bounds, owners) is a
query parameter; column names go through :class:`psycopg.sql.Identifier`.

Each helper returns a :class:`psycopg.sql.Composed` that uses *named* placeholders and the dict
of parameters it needs; ``prefix`` keeps the names of two uses in one query apart::

    from shardctl.ring import sql as ringsql
    cond, params = ringsql.range_condition("id", move, prefix="m")
    conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE {}").format(table, cond), params)
"""

from __future__ import annotations

from collections.abc import Sequence

from psycopg import sql

from shardctl.ring.hashing import Ring, Span

Params = dict[str, object]


def position(column: str | sql.Composable) -> sql.Composed:
    """``md5(column::text) COLLATE "C"``: the column's ring position, comparable as text."""
    col = sql.Identifier(column) if isinstance(column, str) else column
    return sql.SQL('md5({}::text) COLLATE "C"').format(col)


def bucketed(column: str | sql.Composable) -> sql.Composed:
    """``md5(column::text)::uuid``: the ring position as a fixed-length value, ordered as the
    hex text is, for ``width_bucket`` against a ``uuid[]`` of range bounds.

    ``width_bucket`` searches an array of a fixed-length type by bisection but one of a
    variable-length type (text) element by element: against an md5 ring's ~250 bounds the
    text form cost 1.2 s per 224k rows, this one 0.15 s (docs/benchmarks.md).
    """
    col = sql.Identifier(column) if isinstance(column, str) else column
    return sql.SQL("md5({}::text)::uuid").format(col)


def range_condition(
    column: str | sql.Composable, bounds: Span | tuple[str, str | None], *, prefix: str = "r"
) -> tuple[sql.Composed, Params]:
    """A condition true for rows whose key lies in one half-open range ``[lo, hi)``."""
    lo, hi = bounds.sql_bounds() if isinstance(bounds, Span) else bounds
    pos = position(column)
    lo_name, hi_name = f"{prefix}_lo", f"{prefix}_hi"
    if hi is None:
        return sql.SQL("{} >= {}").format(pos, sql.Placeholder(lo_name)), {lo_name: lo}
    cond = sql.SQL("({pos} >= {lo} AND {pos} < {hi})").format(
        pos=pos, lo=sql.Placeholder(lo_name), hi=sql.Placeholder(hi_name)
    )
    return cond, {lo_name: lo, hi_name: hi}


def ranges_condition(
    column: str | sql.Composable, ranges: Sequence[Span], *, prefix: str = "rs"
) -> tuple[sql.Composed, Params]:
    """A condition true for rows whose key lies in any of ``ranges`` (bounds as two arrays)."""
    lows = [r.sql_bounds()[0] for r in ranges]
    highs = [r.sql_bounds()[1] for r in ranges]
    pos = position(column)
    cond = sql.SQL(
        "EXISTS (SELECT 1 FROM unnest({lo}::text[], {hi}::text[]) AS b(lo, hi) "
        'WHERE {pos} >= b.lo COLLATE "C" AND (b.hi IS NULL OR {pos} < b.hi COLLATE "C"))'
    ).format(pos=pos, lo=sql.Placeholder(f"{prefix}_lo"), hi=sql.Placeholder(f"{prefix}_hi"))
    return cond, {f"{prefix}_lo": lows, f"{prefix}_hi": highs}


def owner(
    column: str | sql.Composable, ring: Ring, *, prefix: str = "ring"
) -> tuple[sql.Composed, Params]:
    """An expression giving the ring owner of each row's key, by binary search on the server.

    ``width_bucket`` finds the range a position falls in among the ring's sorted range starts
    (the first is always 0, so every position finds one); the owners array names its owner.
    Positions and starts are compared as uuids (:func:`bucketed`), so that is a bisection,
    O(log ranges) per row, however many virtual nodes the ring has.
    """
    ranges = ring.ranges()
    starts = [r.sql_bounds()[0] for r in ranges]
    owners = [r.owner for r in ranges]
    expr = sql.SQL("({owners}::text[])[width_bucket({pos}, {starts}::uuid[])]").format(
        owners=sql.Placeholder(f"{prefix}_owners"),
        pos=bucketed(column),
        starts=sql.Placeholder(f"{prefix}_starts"),
    )
    return expr, {f"{prefix}_owners": owners, f"{prefix}_starts": starts}


def misplaced_condition(
    column: str | sql.Composable, ring: Ring, shard: str, *, prefix: str = "ring"
) -> tuple[sql.Composed, Params]:
    """A condition true for rows stored on ``shard`` whose key the ring gives to another shard."""
    expr, params = owner(column, ring, prefix=prefix)
    name = f"{prefix}_self"
    cond = sql.SQL("{} IS DISTINCT FROM {}").format(expr, sql.Placeholder(name))
    return cond, {**params, name: shard}
