"""How long operations say what they are doing: a reporter, called with (node, step).

Its own module so that what only reads a cluster (``Cluster``, ``status``) names it without
importing :mod:`shardctl.ops.nodes` and the container specs behind it.
"""

from __future__ import annotations

from collections.abc import Callable

Reporter = Callable[[str, str], None]
"""Called with (node name, what is happening now) while provisioning works."""


def quiet_reporter(node: str, step: str) -> None:
    """A reporter that reports nothing (the library default; the CLI shows progress)."""
