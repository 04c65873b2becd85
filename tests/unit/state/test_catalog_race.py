"""Two writers of one catalog epoch: neither change is lost (``catalog.refuse_other`` and
``catalog.settle``), against an in-memory set of primaries that applies the real write rule."""

from __future__ import annotations

import dataclasses
import itertools
import threading
from collections.abc import Callable

import pytest

from shardctl.errors import CatalogError
from shardctl.state import catalog
from shardctl.state.catalog import EpochTaken, RingRecord

BASE = RingRecord(
    3, "md5", 20, ("shard-0", "shard-1"), rejoin=("shard-1-primary",), created_by="up"
)
NODES = ("shard-0-primary", "shard-1-replica-1", "shard-2-primary")


class Primaries:
    """Every primary's ``shardctl.ring`` (epoch -> record), written as ``catalog.write`` does."""

    def __init__(self, base: RingRecord = BASE) -> None:
        self.held = {n: {base.epoch: base} for n in NODES}
        self.lock = threading.Lock()

    def write(self, node: str, record: RingRecord) -> None:
        with self.lock:
            existing = self.held[node].get(record.epoch)
            if existing is None:
                self.held[node][record.epoch] = record
            else:
                catalog.refuse_other(existing, record)

    def store(self, record: RingRecord, order: tuple[str, ...] = NODES) -> None:
        """One publish: every node in ``order``; the first conflict raised after the others."""
        raced: EpochTaken | None = None
        for node in order:
            try:
                self.write(node, record)
            except EpochTaken as exc:
                raced = raced or exc
        if raced is not None:
            raise raced

    def read(self) -> RingRecord:
        """``read_any``: the highest epoch among the nodes, the first node's on a tie."""
        with self.lock:
            tops = [max(h.values(), key=lambda r: r.epoch) for h in self.held.values()]
        return max(tops, key=lambda r: r.epoch)

    def current(self) -> set[RingRecord]:
        """Each node's current record, created_by aside (what readers may see)."""
        with self.lock:
            tops = [max(h.values(), key=lambda r: r.epoch) for h in self.held.values()]
        return {dataclasses.replace(r, created_by="") for r in tops}


def failover(current: RingRecord) -> RingRecord:
    """shard-0 fails over to its replica and its old primary must re-join."""
    return dataclasses.replace(
        current,
        primaries=tuple(
            sorted({**dict(current.primaries), "shard-0": "shard-0-replica-1"}.items())
        ),
        rejoin=tuple(sorted({*current.rejoin, "shard-0-primary"})),
        created_by="role change: shard-0 -> shard-0-replica-1",
    )


def rejoined(current: RingRecord) -> RingRecord:
    """shard-1's former primary was re-cloned: off the re-join list."""
    return dataclasses.replace(
        current,
        rejoin=tuple(n for n in current.rejoin if n != "shard-1-primary"),
        created_by="monitor: re-joined shard-1-primary",
    )


def both_kept(record: RingRecord) -> bool:
    return dict(record.primaries) == {"shard-0": "shard-0-replica-1"} and record.rejoin == (
        "shard-0-primary",
    )


def no_pause(seconds: float) -> None:
    pass


def test_the_same_epoch_with_other_roles_is_refused_and_the_same_content_is_not() -> None:
    mine = dataclasses.replace(failover(BASE), epoch=4)
    theirs = dataclasses.replace(rejoined(BASE), epoch=4)
    catalog.refuse_other(mine, dataclasses.replace(mine, created_by="a re-run"))
    catalog.refuse_other(mine, dataclasses.replace(mine, rejoin=tuple(reversed(mine.rejoin))))
    with pytest.raises(EpochTaken, match="epoch 4 already holds other acting roles") as raised:
        catalog.refuse_other(theirs, mine)
    assert raised.value.existing == theirs
    other_ring = dataclasses.replace(mine, nodes=("shard-0",))
    with pytest.raises(EpochTaken, match="different ring"):
        catalog.refuse_other(other_ring, mine)
    assert isinstance(raised.value, CatalogError)  # exit 1 where nobody retries


def test_a_writer_that_lost_the_race_builds_on_the_winner_under_a_fresh_epoch() -> None:
    primaries = Primaries()
    # The re-join published epoch 4 first, everywhere; the failover read epoch 3 before.
    primaries.store(dataclasses.replace(rejoined(BASE), epoch=4))
    written = catalog.settle(BASE, failover, primaries.store, primaries.read, pause=no_pause)
    assert written.epoch == 5
    assert both_kept(written)
    assert {r.epoch for r in primaries.current()} == {5}
    assert all(both_kept(r) for r in primaries.current())


@pytest.mark.parametrize("split", range(1, len(NODES)))
def test_two_writers_interleaved_node_by_node_keep_both_changes(split: int) -> None:
    """Both read epoch 3, both write epoch 4; each reached some nodes first."""
    primaries = Primaries()
    first = dataclasses.replace(failover(BASE), epoch=4)
    second = dataclasses.replace(rejoined(BASE), epoch=4)
    for node in NODES[:split]:
        primaries.write(node, first)
    for node in NODES[split:]:
        primaries.write(node, second)
    results: list[RingRecord] = []
    # Each finishes its publish (meeting the other's epoch 4) through settle, in turn.
    for change, mine in ((failover, first), (rejoined, second)):
        calls = itertools.count()

        def store(
            record: RingRecord, mine: RingRecord = mine, calls: itertools.count[int] = calls
        ) -> None:
            if next(calls) == 0:
                primaries.store(mine)  # its own epoch 4, the one it wrote half of
            else:
                primaries.store(record)

        results.append(catalog.settle(BASE, change, store, primaries.read, pause=no_pause))
    final = primaries.read()
    assert both_kept(final), final
    assert primaries.current() == {dataclasses.replace(final, created_by="")}


def test_threads_racing_for_every_epoch_lose_nothing() -> None:
    primaries = Primaries()
    errors: list[BaseException] = []

    def run(change: Callable[[RingRecord], RingRecord], order: tuple[str, ...]) -> None:
        try:
            base = primaries.read()
            catalog.settle(base, change, lambda r: primaries.store(r, order), primaries.read)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [
        threading.Thread(target=run, args=(failover, NODES)),
        threading.Thread(target=run, args=(rejoined, tuple(reversed(NODES)))),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    assert both_kept(primaries.read())


def test_settle_gives_up_after_its_attempts_without_waiting_long() -> None:
    pauses: list[float] = []
    other = dataclasses.replace(rejoined(BASE), epoch=4)

    def always_taken(record: RingRecord) -> None:
        raise EpochTaken("taken", dataclasses.replace(other, epoch=record.epoch))

    with pytest.raises(CatalogError, match="changed under this write 5 times") as raised:
        catalog.settle(BASE, failover, always_taken, lambda: other, pause=pauses.append)
    assert not isinstance(raised.value, EpochTaken)
    assert len(pauses) == catalog.SETTLE_ATTEMPTS - 1
    assert sum(pauses) < 2.0
