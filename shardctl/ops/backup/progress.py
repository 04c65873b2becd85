"""Bytes, rate and time left of a running base backup, per shard and in total.

While ``pg_basebackup`` copies a shard, its source server shows the copy in
``pg_stat_progress_basebackup`` (bytes streamed and, from the size estimate, bytes in all);
:class:`Meter` turns those samples into a rate over the last few seconds and a time left.
:func:`total` sums the shards (copied in parallel: the cluster's time left is the longest
shard's). Pure: unit-tested without a server.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

WINDOW = 5.0
"""Seconds of samples the rate is measured over (a moving window: it follows changes)."""

PROGRESS_QUERY = """
SELECT p.phase, p.backup_streamed, p.backup_total
  FROM pg_catalog.pg_stat_progress_basebackup p
  JOIN pg_catalog.pg_stat_activity a ON a.pid = p.pid
 WHERE a.application_name = %s
"""
"""The copy as its source server sees it: pg_basebackup's walsender, by application name (the
WAL streamed beside it by ``-X stream`` has no row in this view)."""


@dataclass(frozen=True)
class Copied:
    """Where one shard's copy is."""

    shard: str
    phase: str
    """The server's phase (``streaming database files``, ``transferring wal files``, ...)."""
    streamed: int
    total: int | None
    """The server's estimate of the whole copy (None before it is made)."""
    rate: float | None
    """Bytes per second over the last :data:`WINDOW` seconds (None before two samples)."""
    eta: float | None
    """Seconds left at that rate (None when unknown)."""
    done: bool = False

    @property
    def fraction(self) -> float | None:
        """Share of the estimate copied, 0 to 1 (the estimate can be exceeded: capped)."""
        if not self.total:
            return None
        return min(1.0, self.streamed / self.total)


CopiedCallback = Callable[[Copied], None]
"""Called with each new sample of a shard's copy."""


def time_left(streamed: int, total: int | None, rate: float | None) -> float | None:
    """Seconds to copy what is left of ``total`` at ``rate`` bytes/s; None when unknown."""
    if total is None or rate is None or rate <= 0:
        return None
    return max(0, total - streamed) / rate


class Meter:
    """Samples of one shard's copy, turned into :class:`Copied`."""

    def __init__(self, shard: str, window: float = WINDOW) -> None:
        self.shard = shard
        self.window = window
        self._samples: deque[tuple[float, int]] = deque()

    def sample(self, at: float, phase: str, streamed: int, total: int | None) -> Copied:
        """Record ``streamed`` bytes at monotonic time ``at``; the copy as it stands."""
        if self._samples and streamed < self._samples[-1][1]:
            self._samples.clear()  # a new copy (a retry): start again
        self._samples.append((at, streamed))
        while len(self._samples) > 2 and at - self._samples[1][0] >= self.window:
            self._samples.popleft()
        first_at, first = self._samples[0]
        rate = (streamed - first) / (at - first_at) if at > first_at else None
        return Copied(self.shard, phase, streamed, total, rate, time_left(streamed, total, rate))


def total(copies: Iterable[Copied]) -> Copied:
    """All shards at once: bytes and rates summed; time left is the slowest shard's (they copy
    in parallel), unknown while any shard still copying has none; once all are done, the rate
    of them all."""
    found = list(copies)
    running = [c for c in found if not c.done]
    totals = [c.total for c in found]
    whole = None if any(t is None for t in totals) else sum(t for t in totals if t is not None)
    # While copying, the rate of the copies still running; once all are done, of them all
    # (they ran at once: together they copied this many bytes a second).
    rates = [c.rate for c in (running or found) if c.rate is not None]
    etas = [c.eta for c in running]
    eta: float | None
    if not running:
        eta = 0.0
    elif any(e is None for e in etas):
        eta = None
    else:
        eta = max(e for e in etas if e is not None)
    return Copied(
        shard="*",
        phase="copying" if running else "copied",
        streamed=sum(c.streamed for c in found),
        total=whole,
        rate=sum(rates) if rates else None,
        eta=eta,
        done=not running,
    )
