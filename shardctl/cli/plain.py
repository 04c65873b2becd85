"""Output without rich: JSON for scripts, and plain text where rich would print the same.

``status`` piped into a file or a CI log prints its table in plain text, as rich prints it
there (no colours, no terminal), without importing rich: rich's console and table are a fifth
of what ``status`` imports beyond the database driver. :func:`table_text` writes what rich's
``Table`` with ``box.SIMPLE_HEAD`` and ``pad_edge=False`` writes, and declines (None) whatever
it cannot vouch for (a terminal, a table wider than the page, text rich would wrap, measure in
cells, or read as an emoji code); the caller then asks rich. ``tests/unit/cli/test_plain.py``
holds the two to the same text.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from enum import Enum
from typing import Any, TextIO

DEFAULT_WIDTH = 200
"""The page width when output is piped and $COLUMNS says nothing (see :func:`width`)."""

_EMOJI = re.compile(r":(\S*?)(?:-(?:emoji|text))?:")
"""Where rich looks for an emoji code (``:warning:``), as rich finds them."""

_DIGIT_EMOJI = frozenset(("100", "1234", "+1", "-1", "__1"))
"""Rich's emoji names without a letter: any other such name is no emoji (``01:02:03``)."""


def width(stream: TextIO) -> int | None:
    """The terminal's width (None: ask the terminal); piped, $COLUMNS if set, else 200: output
    piped into a CI log is read by people too, and a wide table (``-o wide``) should not wrap
    there."""
    if stream.isatty():
        return None
    columns = os.environ.get("COLUMNS", "")
    return int(columns) if columns.isdigit() and int(columns) >= 40 else DEFAULT_WIDTH


def plain_page() -> int | None:
    """The width of stdout when rich would print to it without any terminal effect (not a
    terminal, and neither ``TTY_COMPATIBLE`` nor ``FORCE_COLOR`` makes rich treat it as
    one); None when rich's own rendering is wanted."""
    if "TTY_COMPATIBLE" in os.environ or "FORCE_COLOR" in os.environ:
        return None
    return width(sys.stdout)


_NARROW = frozenset("·─")
"""The characters beyond ASCII that shardctl writes in its tables and lines: one cell each."""


def _simple(text: str) -> bool:
    """Text rich prints as it is, one cell per character, on one line."""
    if not text.isprintable() or not all(c.isascii() or c in _NARROW for c in text):
        return False
    return not any(_emoji(match[1]) for match in _EMOJI.finditer(text))


def _emoji(name: str) -> bool:
    """Whether rich might print ``:name:`` as an emoji (any name with a letter might)."""
    return name in _DIGIT_EMOJI or any(c.isalpha() for c in name)


def styler(markup: bool) -> Callable[[str, str | None], str]:
    """How a piece of text with a rich style (None: none) is written: as rich markup, the text
    escaped, or (not ``markup``) the text alone."""
    if not markup:
        return lambda text, style: text
    from rich.markup import escape

    return lambda text, style: f"[{style}]{escape(text)}[/]" if style else escape(text)


def table_text(
    title: str,
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    right: Sequence[int] = (),
    above: Sequence[str] = (),
    page: int,
) -> str | None:
    """What rich prints, piped and without trailing spaces, for the lines ``above`` and then a
    ``Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)`` with
    these columns (those at the indexes ``right`` right-justified) and rows, on a page
    ``page`` characters wide; None when rich would print it otherwise (wrap, shrink, emoji)."""
    if not all(_simple(t) for t in (title, *headers, *above, *(c for row in rows for c in row))):
        return None
    count = len(headers)
    if any(len(row) != count for row in rows) or count == 0:
        return None
    widths = [max(len(row[i]) for row in (headers, *rows)) for i in range(count)]
    inner = sum(widths) + 2 * count - 2 + count - 1  # padding but at the edges, dividers
    if inner + 2 > page or len(title) > inner + 2 or any(len(line) > page for line in above):
        return None

    def line(cells: Sequence[str]) -> str:
        parts = [
            cells[i].rjust(widths[i]) if i in right else cells[i].ljust(widths[i])
            for i in range(count)
        ]
        return (" " + "   ".join(parts)).rstrip()

    lines = [*(text.rstrip() for text in above), title.rstrip(), "", line(headers)]
    lines.append(" " + "─" * inner)
    lines += [line(row) for row in rows]
    lines.append("")
    return "\n".join(lines) + "\n"


def to_jsonable(value: Any) -> Any:
    """Dataclasses, enums and tuples as plain JSON values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def print_json(data: Any) -> None:
    """JSON on stdout, one document."""
    sys.stdout.write(json.dumps(to_jsonable(data), indent=2) + "\n")


def plural(n: int, noun: str) -> str:
    """``1 network``, ``2 networks``, ``1,024 rows``."""
    return f"{n:,} {noun}" if n == 1 else f"{n:,} {noun}s"
