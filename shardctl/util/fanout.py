"""The one fan-out: run tasks at once, one thread each, and collect what each returned or raised.

Every "on every node / shard / engine at once" in shardctl goes through :func:`gather` (errors
returned, a deadline for hung tasks) or :func:`each` (the first error raised); work that runs
beside the caller's own loop (load workers, COPY streams) through :class:`Background`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Mapping
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


class Background(Generic[K, T]):
    """Tasks started on their own threads, one each, while the caller goes on; :meth:`join`
    waits for them and returns what each returned or raised."""

    def __init__(self, tasks: Mapping[K, Callable[[], T]], *, prefix: str = "shardctl") -> None:
        self._keys = list(tasks)
        self._results: dict[K, T | BaseException] = {}
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(
                target=self._run, args=(key, task), daemon=True, name=f"{prefix}-{key}"
            )
            for key, task in tasks.items()
        ]
        for thread in self._threads:
            thread.start()

    def _run(self, key: K, task: Callable[[], T]) -> None:
        try:
            value: T | BaseException = task()
        except BaseException as exc:  # handed to the caller
            value = exc
        with self._lock:
            self._results[key] = value

    def alive(self) -> bool:
        """Whether some task is still running."""
        return any(thread.is_alive() for thread in self._threads)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until every task is done, or ``timeout`` seconds in all; whether all are."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not self.alive()

    def join(self, timeout: float | None = None) -> dict[K, T | BaseException]:
        """:meth:`wait`, then each task's result or error, in the order given; a task still
        running after ``timeout`` yields a TimeoutError and is left behind on its daemon thread."""
        self.wait(timeout)
        with self._lock:
            done = dict(self._results)
        late = f"no answer within {timeout:g}s" if timeout is not None else ""
        return {key: done[key] if key in done else TimeoutError(late) for key in self._keys}


def gather(
    tasks: Mapping[K, Callable[[], T]],
    *,
    timeout: float | None = None,
    interrupted: Callable[[], None] | None = None,
    prefix: str = "shardctl",
) -> dict[K, T | BaseException]:
    """Run every task at once, one thread each; key -> its result, or the error it raised.

    With ``timeout``, a task still running after that many seconds yields a TimeoutError and is
    left behind on its daemon thread: a hung node cannot hold up the others. With
    ``interrupted``, a Ctrl-C while waiting calls it (to tell the tasks to stop), waits for every
    task to end, and goes on.
    """
    running = Background(tasks, prefix=prefix)
    if interrupted is None:
        return running.join(timeout)
    try:
        return running.join(timeout)
    except KeyboardInterrupt:
        interrupted()
        running.wait()
        raise


def each(
    tasks: Mapping[K, Callable[[], T]],
    *,
    interrupted: Callable[[], None] | None = None,
    prefix: str = "shardctl",
) -> dict[K, T]:
    """Run every task at once and wait for all; the first error, in the order of ``tasks``."""
    out: dict[K, T] = {}
    for key, result in gather(tasks, interrupted=interrupted, prefix=prefix).items():
        if isinstance(result, BaseException):
            raise result
        out[key] = result
    return out
