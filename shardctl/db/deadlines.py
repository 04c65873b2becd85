"""Statements that cannot outlive their deadline, even on a server that stopped answering.

libpq has no client-side query timeout, and a frozen server (``docker pause``, a hung host)
behind Docker's userland proxy still has its TCP packets acknowledged, so neither keepalives
nor ``tcp_user_timeout`` notice it. :class:`Watchdog` watches the deadlines of the statements in
flight from one thread; when one passes, it shuts the connection's socket down. The waiting
thread then wakes at once with an ``OperationalError``.

One mechanism for both users: the Router guards each statement with its caller's deadline (a
transient fault: it retries elsewhere or gives up, and the pool discards the connection), and
shardctl's own connections (:func:`shardctl.db.pg.connect`) guard every round trip -- a
statement, a commit, a COPY chunk -- with :data:`WATCHDOG`, so no command waits for ever on a
frozen server or on a commit that waits for a lost synchronous standby.
"""

from __future__ import annotations

import itertools
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import psycopg

Conn = psycopg.Connection[Any]


TICK = 0.1
"""Seconds between the watchdog's looks at the statements in flight: a statement is cut short
at most this long after its deadline."""


class Watchdog:
    """One thread that interrupts connections whose statement outlived its deadline.

    A statement in flight costs the caller one dictionary entry, set and removed without a
    lock (single dictionary operations are atomic); the thread, started on first use, looks at
    them every :data:`TICK` seconds. Whichever side removes an entry first owns it: the caller
    when its statement ended in time, the thread when it did not."""

    def __init__(self) -> None:
        self._running: dict[int, tuple[float, Conn]] = {}
        self._seq = itertools.count()
        self._start = threading.Lock()
        self._thread: threading.Thread | None = None
        self.interrupted = 0
        """How many statements it cut short (for tests and stats)."""

    @contextmanager
    def guard(self, conn: Conn, until: float) -> Iterator[None]:
        """Shut ``conn`` down if the block is still running at ``until`` (time.monotonic())."""
        token = next(self._seq)
        self._running[token] = (until, conn)
        if self._thread is None:
            with self._start:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name="shardctl-deadlines", daemon=True
                    )
                    self._thread.start()
        try:
            yield
        finally:
            self._running.pop(token, None)

    def _run(self) -> None:
        while True:
            time.sleep(TICK)
            now = time.monotonic()
            for token, (until, conn) in self._running.copy().items():
                if until <= now and self._running.pop(token, None) is not None:
                    self.interrupted += 1
                    interrupt(conn)


def interrupt(conn: Conn) -> None:
    """Shut down ``conn``'s socket, so that a thread blocked on it wakes with an error."""
    with suppress(Exception):
        fd = conn.pgconn.socket
        duplicate = socket.socket(fileno=os.dup(fd))
        try:
            duplicate.shutdown(socket.SHUT_RDWR)
        finally:
            duplicate.close()


WATCHDOG = Watchdog()
"""The process's watchdog for shardctl's own connections (each Router pool has its own)."""
