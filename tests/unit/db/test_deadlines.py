"""The watchdog: a statement past its deadline has its socket shut down; one that ended in
time is never touched (real sockets, no database)."""

from __future__ import annotations

import socket
import time
from types import SimpleNamespace
from typing import Any, cast

from shardctl.db.deadlines import TICK, Watchdog


def connection(sock: socket.socket) -> Any:
    """What the watchdog reads of a psycopg connection: ``pgconn.socket``."""
    return cast(Any, SimpleNamespace(pgconn=SimpleNamespace(socket=sock.fileno())))


def test_a_statement_past_its_deadline_is_woken_and_one_in_time_is_left_alone() -> None:
    watchdog = Watchdog()
    late, peer = socket.socketpair()
    early, early_peer = socket.socketpair()
    with late, peer, early, early_peer:
        with watchdog.guard(connection(early), time.monotonic() + 0.2):
            pass  # ended in time
        late.settimeout(5)  # a watchdog that never fires fails the test instead of hanging it
        started = time.monotonic()
        with watchdog.guard(connection(late), started + 0.2):
            assert late.recv(1) == b""  # blocks like a frozen server, until shut down
        woke = time.monotonic() - started
        assert 0.2 <= woke <= 0.2 + 3 * TICK + 2.0, woke  # margin for a loaded machine
        time.sleep(3 * TICK)
        assert watchdog.interrupted == 1
        early_peer.sendall(b"x")
        assert early.recv(1) == b"x"  # still open
