"""Connections to shard primaries that survive a server restart, for the long steps of a reshard."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import psycopg

from shardctl.db import pg
from shardctl.errors import DatabaseUnavailable
from shardctl.util.waiting import retrying

T = TypeVar("T")
Conn = psycopg.Connection[Any]

RECONNECT_PATIENCE = 120.0
"""Seconds a step waits for a restarted primary before giving up (resumable)."""
RECONNECT_PAUSE = 0.5


class Links:
    """Connections to shard primaries, opened with ``open`` on first use: on a lost
    connection, :meth:`retrying` reconnects (waiting for the node to come back) and redoes the
    step, which is safe because every step of a reshard is idempotent (a chunk commits with its
    progress row; a drain deletes only the change rows it processed)."""

    def __init__(
        self, open_primary: Callable[[str], Conn], patience: float = RECONNECT_PATIENCE
    ) -> None:
        self.open_primary = open_primary
        self.patience = patience
        self.conns: dict[str, Conn] = {}

    def get(self, shard: str) -> Conn:
        """An open connection to ``shard``'s primary, made on first use."""
        if shard not in self.conns:
            self.conns[shard] = self.open_primary(shard)
        return self.conns[shard]

    def retrying(self, step: Callable[[], T], what: str) -> T:
        """Run ``step``; after a lost connection, reconnect and run it again until patience ends."""

        def gave_up(exc: BaseException) -> DatabaseUnavailable:
            return DatabaseUnavailable(
                f"{what}: {pg.first_line(exc)} (for {self.patience:g}s); the reshard is "
                "resumable: run `shardctl rebalance --resume` once the node is back"
            )

        return retrying(
            step,
            retry_on=(psycopg.OperationalError, DatabaseUnavailable),
            patience=self.patience,
            pause=RECONNECT_PAUSE,
            after_failure=self.close,
            on_give_up=gave_up,
        )

    def close(self) -> None:
        """Close every connection (they are reopened on the next :meth:`get`)."""
        for conn in self.conns.values():
            conn.close()
        self.conns.clear()

    def __enter__(self) -> Links:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
