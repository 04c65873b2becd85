"""What the fence and prepared statements cost the server, per INSERT, in CPU time.

    python benchmarks/fence_cost.py [--writes N] [--repeat R] [--cluster NAME]

Brings up its own 1-shard cluster (no replica, test image) and removes it afterwards. One
connection at a time inserts ``--writes`` fresh users into copies of ``users`` that differ only
in their triggers; the server backend's CPU time (``/proc/<pid>/stat``, read with
``pg_read_file`` as the superuser) and this process's are divided by the writes. CPU time, not
throughput: on a loaded machine it barely moves when other work competes for the cores, and it
is what bounds the throughput of a machine at its limit. Least of ``--repeat`` interleaved
rounds.

- ``bare``: no trigger;
- ``armed, idle``: this version's guard triggers, no range listed (``WHEN (false)``);
- ``armed, ranges listed``: the guard's ``WHEN`` clause over two listed ranges that the keys
  miss (a source after a reshard: one md5 and one binary search per row);
- ``old guard``: the guard before issue 14, a ``SECURITY DEFINER`` PL/pgSQL row trigger fired
  for every row (one index probe of an empty ``shardctl.moving``);
- ``old Router write``: what ``Router.execute`` sent before issue 14 into a table with the old
  guard: BEGIN, ``shardctl.assert_owner``, the INSERT, COMMIT, pipelined, never prepared.

Each way runs prepared (``prepare_threshold=2``, as the Router's pools now) and not (``None``,
as they were before).
"""

from __future__ import annotations

import argparse
import os
import time
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
from _cluster import temp_cluster

from shardctl.db import pg
from shardctl.ops.cluster import Cluster

Conn = psycopg.Connection[Any]
INSERT = "INSERT INTO {} (id, first_name, email) VALUES (%s, 'bench', 'bench@x')"
SPANS = "'{[11111111111111111111111111111111,12000000000000000000000000000000),[fff,)}'"
SETUP = f"""
CREATE TABLE users_bare (LIKE users INCLUDING ALL);
CREATE TABLE users_listed (LIKE users INCLUDING ALL);
CREATE TABLE users_old (LIKE users INCLUDING ALL);
CREATE TRIGGER g BEFORE INSERT ON users_listed FOR EACH ROW
    WHEN (md5(to_jsonb(NEW.id) #>> '{{}}') <@ {SPANS}::shardctl.span_multirange)
    EXECUTE FUNCTION shardctl.guard('id');
CREATE TRIGGER g BEFORE INSERT OR UPDATE OR DELETE ON users_old FOR EACH ROW
    EXECUTE FUNCTION shardctl.guard('id');
"""


def insert(table: str) -> Callable[[Conn, uuid.UUID], None]:
    """A plain autocommit INSERT into ``table``."""
    statement = INSERT.format(table)

    def write(conn: Conn, key: uuid.UUID) -> None:
        conn.execute(statement, (key,))

    return write


def old_router_write(conn: Conn, key: uuid.UUID) -> None:
    """What Router.execute sent before issue 14."""
    with conn.pipeline():
        conn.execute("BEGIN", prepare=False)
        conn.execute("SELECT shardctl.assert_owner(%s)", (str(key),), prepare=False)
        conn.execute(INSERT.format("users_old"), (key,), prepare=False)
        conn.execute("COMMIT", prepare=False)


WAYS: dict[str, Callable[[Conn, uuid.UUID], None]] = {
    "bare": insert("users_bare"),
    "armed, idle": insert("users"),
    "armed, ranges listed": insert("users_listed"),
    "old guard": insert("users_old"),
    "old Router write": old_router_write,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writes", type=int, default=3000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cluster", help="cluster name (default: a random one)")
    args = parser.parse_args()
    with temp_cluster(shards=1, replicas=0, name=args.cluster) as cluster:
        run(cluster, args.writes, args.repeat)


def run(cluster: Cluster, writes: int, repeat: int) -> None:
    node = cluster.topology.shard_nodes("shard-0")[0]
    info = pg.conninfo(node, cluster.credentials(), cluster.topology.spec.database)
    ticks = os.sysconf("SC_CLK_TCK")
    with psycopg.connect(info, autocommit=True) as monitor:
        monitor.execute(SETUP)

        def server_cpu(pid: int) -> float:
            row = monitor.execute("SELECT pg_read_file(%s)", (f"/proc/{pid}/stat",)).fetchone()
            assert row is not None
            fields = str(row[0]).rsplit(")", 1)[1].split()  # after the command name
            return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime

        least: dict[tuple[str, bool], tuple[float, float]] = {}
        for _ in range(repeat):
            for name, write in WAYS.items():
                for prepared in (True, False):
                    if name == "old Router write" and prepared:
                        continue  # it never prepared
                    with psycopg.connect(
                        info, autocommit=True, prepare_threshold=2 if prepared else None
                    ) as conn:
                        for _ in range(10):
                            write(conn, uuid.uuid4())
                        keys = [uuid.uuid4() for _ in range(writes)]
                        pid = conn.info.backend_pid
                        server, client = server_cpu(pid), time.process_time()
                        for key in keys:
                            write(conn, key)
                        server = (server_cpu(pid) - server) / writes * 1e6
                        client = (time.process_time() - client) / writes * 1e6
                    old = least.get((name, prepared), (float("inf"), float("inf")))
                    least[(name, prepared)] = (min(old[0], server), min(old[1], client))
    print(f"{writes} inserts per way and round, least of {repeat} interleaved rounds")
    print(f"{'way':<22} {'prepared':>9} {'server µs':>10} {'client µs':>10}")
    for (name, prepared), (server, client) in least.items():
        print(f"{name:<22} {'yes' if prepared else 'no':>9} {server:>10.0f} {client:>10.0f}")


if __name__ == "__main__":
    main()
