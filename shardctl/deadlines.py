"""Statements that cannot outlive their deadline, even on a server that stopped answering.

libpq has no client-side query timeout, and a frozen server (``docker pause``, a hung host)
behind Docker's userland proxy still has its TCP packets acknowledged, so neither keepalives
nor ``tcp_user_timeout`` notice it. :class:`Watchdog` keeps the deadlines of the statements in
flight on one thread; when one passes, it shuts the connection's socket down. The waiting
thread then wakes at once with an ``OperationalError`` (a transient fault: the Router retries
elsewhere or gives up at its deadline) and the pool discards the broken connection.
"""

from __future__ import annotations

import heapq
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


class Watchdog:
    """One thread that interrupts connections whose statement outlived its deadline."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Conn]] = []
        self._live: set[int] = set()
        self._seq = itertools.count()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self.interrupted = 0
        """How many statements it cut short (for tests and stats)."""

    @contextmanager
    def guard(self, conn: Conn, until: float) -> Iterator[None]:
        """Shut ``conn`` down if the block is still running at ``until`` (time.monotonic())."""
        token = next(self._seq)
        with self._wake:
            heapq.heappush(self._heap, (until, token, conn))
            self._live.add(token)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="shardctl-deadlines", daemon=True
                )
                self._thread.start()
            elif self._heap[0][1] == token:
                self._wake.notify()  # the new deadline is the nearest
        try:
            yield
        finally:
            with self._wake:
                self._live.discard(token)

    def _run(self) -> None:
        while True:
            with self._wake:
                while self._heap and self._heap[0][1] not in self._live:
                    heapq.heappop(self._heap)  # finished in time
                if not self._heap:
                    self._wake.wait()
                    continue
                until, token, conn = self._heap[0]
                delay = until - time.monotonic()
                if delay > 0:
                    self._wake.wait(delay)
                    continue
                heapq.heappop(self._heap)
                self._live.discard(token)
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
