"""The terminal and the pipe: rich consoles, tables printed for people, JSON for scripts,
and progress that is live on a terminal and plain timestamped lines in a log.

With the command modules, the only place that imports rich. The tables of each concern live in
:mod:`shardctl.cli.views`; JSON and what needs no rich, in :mod:`shardctl.cli.plain`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape as _escape

from shardctl.cli.plain import width

if TYPE_CHECKING:  # progress is for the commands that wait: imported by them only
    from rich.progress import Progress, ProgressColumn, Task, TaskID


console = Console(width=width(sys.stdout))
err_console = Console(stderr=True, width=width(sys.stderr))


def show(renderable: Any, *, err: bool = False) -> None:
    """Print a table for people; piped, without the trailing spaces rich pads lines with."""
    target = err_console if err else console
    if target.is_terminal:
        target.print(renderable)
        return
    with target.capture() as captured:
        target.print(renderable)
    text = "\n".join(line.rstrip() for line in captured.get().splitlines())
    (sys.stderr if err else sys.stdout).write(text + "\n")


def warn(text: str) -> None:
    """One warning line on stderr (``text`` is not markup)."""
    err_console.print(f"[yellow]warning[/]: {escape(text)}")


PLAIN_EVERY = 5.0
"""Seconds between two plain progress lines of one task (and at each change of step)."""


def progress(
    *columns: str | ProgressColumn, plain: Callable[[Task], str] | None = None
) -> Progress | PlainProgress:
    """A live display on stderr that disappears when done, so stdout stays the result only.

    With no terminal on stderr (a CI log), plain timestamped lines instead: one per task when
    its description (the step) changes, and every :data:`PLAIN_EVERY` seconds while it runs;
    ``plain`` writes a task's line (default: its description, then ``done/total``)."""
    if err_console.is_terminal:
        from rich.progress import Progress

        return Progress(*columns, console=err_console, transient=True)
    return PlainProgress(plain or _plain_line)


def _plain_line(task: Task) -> str:
    if task.total is None:
        return task.description
    return f"{task.description} {task.completed:,.0f}/{task.total:,.0f}"


class PlainProgress:
    """The part of rich's :class:`Progress` the commands use, written as plain lines."""

    def __init__(self, line: Callable[[Task], str]) -> None:
        self._line = line
        self._tasks: dict[TaskID, Task] = {}
        self._said: dict[TaskID, tuple[str, str, float]] = {}
        """Per task: the step and the line last written, and when."""

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if kind is None:
            for task_id in self._tasks:
                self._say(task_id, force=True)

    def add_task(self, description: str, total: float | None = 100.0, **fields: Any) -> TaskID:
        """A new task, announced at once."""
        from rich.progress import Task, TaskID

        task_id = TaskID(len(self._tasks))
        self._tasks[task_id] = Task(
            task_id, description, total, 0, _get_time=time.monotonic, fields=fields
        )
        self._say(task_id)
        return task_id

    def update(
        self,
        task_id: TaskID,
        *,
        total: float | None = None,
        completed: float | None = None,
        description: str | None = None,
        **fields: Any,
    ) -> None:
        """Change a task; a line when its step changed or a while has passed."""
        task = self._tasks[task_id]
        if total is not None:
            task.total = total
        if completed is not None:
            task.completed = completed
        if description is not None:
            task.description = description
        task.fields.update(fields)
        self._say(task_id)

    def _say(self, task_id: TaskID, *, force: bool = False) -> None:
        task = self._tasks[task_id]
        text = self._line(task)
        step, said, when = self._said.get(task_id, ("", "", 0.0))
        now = time.monotonic()
        if force:  # the end: the last state, unless that is what was said last
            if text == said:
                return
        elif task.description == step and now - when < PLAIN_EVERY:
            return
        self._said[task_id] = (task.description, text, now)
        sys.stderr.write(f"{datetime.now():%H:%M:%S} {text}\n")
        sys.stderr.flush()


def escape(text: str) -> str:
    """Text safe to embed in rich markup."""
    return _escape(text)
