"""Short human text for facts: an error's first line, sizes, durations, LSNs.

Pure functions with no imports from the package, so every layer (library and CLI) can use the
same spelling of the same fact.
"""

from __future__ import annotations

MISSING = "-"
"""How a fact that is not known (no LSN, no size) is shown, in tables and messages alike."""


def first_line(error: BaseException | str) -> str:
    """The first non-empty line of an error message (an exception's class name if it has none)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if lines:
        return lines[0]
    return type(error).__name__ if isinstance(error, BaseException) else ""


def size_text(n: int | None) -> str:
    """Bytes in a short human form (``0 B``, ``1.5 MiB``); :data:`MISSING` when unknown."""
    if n is None:
        return MISSING
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


def duration_text(seconds: float) -> str:
    """Seconds in a short human form (``4 ms``, ``1.2 s``)."""
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.1f} s"


def lsn_int(text: str) -> int | None:
    """A ``X/Y`` LSN as an integer; None when it is not one (empty, :data:`MISSING`)."""
    high, slash, low = text.partition("/")
    try:
        return (int(high, 16) << 32) | int(low, 16) if slash else None
    except ValueError:
        return None


def lsn_text(lsn: int | None) -> str:
    """An integer LSN in PostgreSQL's ``X/Y`` form; :data:`MISSING` when there is none."""
    return MISSING if lsn is None else f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"
