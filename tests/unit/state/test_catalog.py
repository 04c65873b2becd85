"""The catalog's pure parts: combining primaries' records, topology drift, SQL helpers."""

from __future__ import annotations

from pathlib import Path

import pytest
from psycopg import sql

from shardctl.config.topology import parse
from shardctl.errors import CatalogError
from shardctl.ring import sql as ringsql
from shardctl.ring.hashing import Ring
from shardctl.state import catalog
from shardctl.state.catalog import RingRecord, combine, drift

TOPOLOGY = """
cluster: demo
ring: {algorithm: md5, vnodes: 20}
tables: [{name: users, key: id}]
shards: [{name: shard-0}, {name: shard-1}]
"""


def record(epoch: int, *nodes: str, algorithm: str = "md5", vnodes: int = 20) -> RingRecord:
    return RingRecord(epoch, algorithm, vnodes, nodes)


def test_initial_record_is_the_topology_ring_at_epoch_1() -> None:
    topology = parse(TOPOLOGY, Path("topology.yaml"))
    first = catalog.initial_record(topology)
    assert first == record(1, "shard-0", "shard-1")
    assert first.ring() == Ring(["shard-0", "shard-1"], vnodes=20, algorithm="md5")
    assert RingRecord.from_ring(first.ring(), 1) == first


def test_the_highest_epoch_wins_and_every_disagreement_is_named() -> None:
    view = combine(
        {
            "a-primary": record(2, "a", "b", "c"),
            "b-primary": record(1, "a", "b"),
            "c-primary": None,
        }
    )
    assert view.record() == record(2, "a", "b", "c")
    assert not view.agrees
    assert any("no catalog on c-primary" in p for p in view.problems)
    assert any("b-primary (epoch 1) behind epoch 2" in p for p in view.problems)


def test_a_primary_that_only_missed_a_role_change_is_told_to_run_up() -> None:
    same_ring = record(3, "a", "b")
    view = combine({"a-primary": record(4, "a", "b"), "b-primary": same_ring})
    assert view.problems == (
        "b-primary (epoch 3) behind epoch 4 (a role change it did not hear of, the same ring): "
        "`shardctl up` copies the epoch there",
    )


def test_agreeing_primaries_have_no_problems() -> None:
    view = combine({"a": record(3, "x"), "b": record(3, "x")})
    assert view.agrees and view.record().epoch == 3


def test_two_rings_under_one_epoch_are_refused() -> None:
    with pytest.raises(CatalogError, match="epoch 2 differs"):
        combine({"a": record(2, "x", "y"), "b": record(2, "y", "x")})


def test_no_catalog_anywhere_says_run_up() -> None:
    view = combine({"a": None, "b": None})
    with pytest.raises(CatalogError, match="shardctl up"):
        view.ring()


def test_drift_names_algorithm_vnodes_and_shard_differences() -> None:
    topology = parse(TOPOLOGY, Path("topology.yaml"))
    assert drift(topology, record(1, "shard-0", "shard-1")) == []
    notes = drift(topology, record(4, "shard-0", "shard-9", algorithm="md5", vnodes=30))
    text = "\n".join(notes)
    assert "30" in text and "20 virtual nodes" in text
    assert "shard-9" in text and "does not declare" in text
    assert "shard-1 declared" in text and "not in the ring" in text
    balanced = drift(topology, record(1, "shard-0", "shard-1", algorithm="balanced"))
    assert len(balanced) == 1 and "'balanced'" in balanced[0]


def test_ring_sql_uses_parameters_for_every_value() -> None:
    ring = Ring(["a", "b"], vnodes=3, algorithm="md5")
    expr, params = ringsql.misplaced_condition("id", ring, "a")
    text = expr.as_string()
    # width_bucket bisects a fixed-length array only: positions and starts as uuids
    assert 'width_bucket(md5("id"::text)::uuid, %(ring_starts)s::uuid[])' in text
    assert params["ring_self"] == "a"
    starts = params["ring_starts"]
    assert isinstance(starts, list) and starts == sorted(starts) and starts[0] == "0" * 32
    assert params["ring_owners"] == [r.owner for r in ring.ranges()]

    top = ring.ranges()[-1]
    cond, bounds = ringsql.range_condition("id", top, prefix="m")
    assert bounds == {"m_lo": top.sql_bounds()[0]}  # the top range has no upper bound
    assert "%(m_hi)s" not in cond.as_string()
    both, values = ringsql.ranges_condition(sql.Identifier("k"), ring.ranges_of("b"))
    assert "unnest" in both.as_string() and len(values["rs_lo"]) == len(ring.ranges_of("b"))  # type: ignore[arg-type]
