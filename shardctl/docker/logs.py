"""The nodes' server logs, from whichever engine each node runs on, interleaved by time.

Each line comes with the engine's timestamp (``docker logs --timestamps``), which orders the
lines of several nodes; :func:`read` returns what there is, :func:`follow` what comes next too.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from shardctl.config.topology import Node
from shardctl.docker.clients import docker_errors
from shardctl.docker.engine import Engines
from shardctl.docker.records import Container

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class LogLine:
    """One line a node's server wrote."""

    node: str
    at: datetime
    text: str


def parse(node: str, raw: bytes) -> Iterator[LogLine]:
    """Lines of ``docker logs --timestamps`` output: ``<RFC 3339 time> <text>`` each."""
    for line in raw.decode("utf-8", "replace").splitlines():
        stamp, _, text = line.partition(" ")
        yield LogLine(node, _time(stamp), text)


def _time(stamp: str) -> datetime:
    """The engine's nanosecond timestamp, to the microsecond (Python's resolution)."""
    head, _, rest = stamp.rstrip("Z").partition(".")
    fraction = (rest + "000000")[:6]
    try:
        return datetime.fromisoformat(f"{head}.{fraction}+00:00")
    except ValueError:
        return _EPOCH


def read(
    engines: Engines, nodes: Sequence[Node], *, since: datetime | None, tail: int | None
) -> tuple[list[LogLine], list[str]]:
    """The logs of ``nodes`` merged in time order, and the nodes that have no container."""
    lines: list[LogLine] = []
    missing: list[str] = []
    for node in nodes:
        container = engines.container(node)
        if container is None:
            missing.append(node.name)
            continue
        api = engines.client(container.endpoint).api
        with docker_errors(f"reading the logs of {node.container}"):
            raw = api.logs(container.id, timestamps=True, since=since, tail=_tail(tail))
        lines += parse(node.name, raw)
    return sorted(lines, key=lambda line: line.at), missing


def _tail(tail: int | None) -> int | Literal["all"]:
    return "all" if tail is None else tail


def follow(
    engines: Engines, nodes: Sequence[Node], *, since: datetime | None, tail: int | None
) -> tuple[Iterator[LogLine], list[str]]:
    """The logs of ``nodes`` as they come (the last ``tail`` lines of each first), until the
    caller stops iterating; and the nodes that have no container."""
    lines: queue.Queue[LogLine] = queue.Queue()
    missing: list[str] = []
    for node in nodes:
        container = engines.container(node)
        if container is None:
            missing.append(node.name)
            continue
        threading.Thread(
            target=_pump, args=(engines, container, node.name, since, tail, lines), daemon=True
        ).start()

    def drain() -> Iterator[LogLine]:
        while True:
            yield lines.get()

    return drain(), missing


def _pump(
    engines: Engines,
    container: Container,
    name: str,
    since: datetime | None,
    tail: int | None,
    out: queue.Queue[LogLine],
) -> None:
    """Stream one container's log into ``out``; the engine's read timeout reopens the stream
    from the last line seen (a quiet server writes nothing for minutes)."""
    import docker.errors
    import requests.exceptions

    last = since
    first = True
    while True:
        try:
            stream = engines.client(container.endpoint).api.logs(
                container.id,
                stream=True,
                follow=True,
                timestamps=True,
                since=last,
                tail=_tail(tail) if first else "all",
            )
            first = False
            pending = b""
            for chunk in stream:
                pending += chunk
                *complete, pending = pending.split(b"\n")
                for raw in complete:
                    for line in parse(name, raw):
                        if last is None or line.at > last:
                            last = line.at
                            out.put(line)
            return  # the container stopped: its log ends
        except (requests.exceptions.RequestException, docker.errors.DockerException):
            time.sleep(1.0)  # an engine that is away: ask again, not in a tight loop
