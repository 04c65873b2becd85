"""The ``postgres:`` settings of a topology, judged by the server's own catalog.

Which settings exist, what values they take and whether a reload applies them is not kept
here: it comes from the image the cluster runs (``postgres --describe-config`` and
``postgres -C name -c name=value``, run by :mod:`shardctl.docker.serverinfo`), so it is right
for whatever PostgreSQL version the user runs. This module is the pure part: parse what the
server said, turn it into problems with a "did you mean", read back what ``ALTER SYSTEM`` wrote
on a node, and classify a change as a reload or a restart.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from shardctl.config.messages import compose
from shardctl.config.messages import located as messages_located
from shardctl.errors import TopologyError

Loc = tuple[str | int, ...]

AUTO_CONF = "postgresql.auto.conf"
"""Where ``ALTER SYSTEM`` keeps what shardctl applied, in each node's data directory."""

RESTART_CONTEXTS = frozenset({"postmaster", "internal"})
"""``pg_settings.context`` values whose change needs a server restart."""


class Apply(StrEnum):
    """How a change of settings reaches a running server."""

    NOTHING = "nothing"
    RELOAD = "reload"
    RESTART = "restart"


@dataclass(frozen=True)
class SettingInfo:
    """One line of ``postgres --describe-config``."""

    name: str
    context: str
    vartype: str
    minimum: str = ""
    maximum: str = ""


@dataclass(frozen=True)
class ServerCatalog:
    """What an image's server knows: its major version, its settings, and its verdict on the
    values a topology gives (name → the server's complaint)."""

    image: str
    major: int
    version: str
    settings: Mapping[str, SettingInfo]
    refused: Mapping[str, str] = field(default_factory=dict)

    def restart_needed(self, names: set[str]) -> bool:
        """Whether changing ``names`` needs a restart (an unknown name is assumed to)."""
        for name in names:
            info = self.settings.get(name.lower())
            if "." in name:
                continue  # an extension's placeholder: reloadable until its library says more
            if info is None or info.context in RESTART_CONTEXTS:
                return True
        return False


def value_text(value: object) -> str:
    """A setting's value as the server reads it (``on``/``off`` for YAML booleans)."""
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


_LINE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.]*)\s*=\s*'((?:[^'\\]|''|\\.)*)'\s*$")


def read_auto_conf(text: str, managed: frozenset[str] = frozenset()) -> dict[str, str]:
    """The settings in a ``postgresql.auto.conf`` text (what ``ALTER SYSTEM`` gave a node),
    names lower-case, without the ``managed`` ones."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        match = _LINE.match(line)
        if match:
            value = match.group(2).replace("''", "'").replace("\\\\", "\\")
            if match.group(1).lower() not in managed:
                found[match.group(1).lower()] = value
    return found


def changed(old: Mapping[str, str], new: Mapping[str, object]) -> list[tuple[str, str, str]]:
    """(name, old, new) for every setting added, removed or changed; "(default)" for absent."""
    wanted = {name.lower(): value_text(value) for name, value in new.items()}
    out = []
    for name in sorted(set(old) | set(wanted)):
        before, after = old.get(name, "(default)"), wanted.get(name, "(default)")
        if before != after:
            out.append((name, before, after))
    return out


def parse_describe(text: str) -> dict[str, SettingInfo]:
    """``postgres --describe-config`` output (tab separated: name, context, group, type, boot
    value, min, max, descriptions) as name → :class:`SettingInfo`."""
    found: dict[str, SettingInfo] = {}
    for line in text.splitlines():
        fields = line.split("\t")
        if len(fields) >= 7 and re.fullmatch(r"[a-z_][a-z0-9_.]*", fields[0]):
            found[fields[0]] = SettingInfo(
                fields[0], fields[1], fields[3].lower(), fields[5], fields[6]
            )
    return found


def parse_major(version: str) -> int:
    """The major version in ``postgres --version`` (``postgres (PostgreSQL) 15.18 ...``)."""
    match = re.search(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?", version)
    if match is None:
        raise ValueError(f"not a postgres --version line: {version[:80]!r}")
    major = int(match.group(1))
    return major if major >= 10 else major * 100 + int(match.group(2) or 0)


def problems(settings: Mapping[str, object], catalog: ServerCatalog) -> Iterator[tuple[Loc, str]]:
    """Every ``postgres:`` setting the image's server does not know or refuses the value of,
    located at ``postgres.<name>``, with a "did you mean" for a near name."""
    for name, value in settings.items():
        where: Loc = ("postgres", name)
        if "." not in name and name.lower() not in catalog.settings:
            near = difflib.get_close_matches(name.lower(), list(catalog.settings), n=1)
            hint = f"; did you mean {near[0]}?" if near else ""
            yield (
                where,
                f"{name} is not a setting of PostgreSQL {catalog.version} ({catalog.image}){hint}",
            )
            continue
        complaint = catalog.refused.get(name)
        if complaint:
            info = catalog.settings.get(name.lower())
            allowed = ""
            if info is not None and info.vartype in ("integer", "real") and info.maximum:
                article = "an" if info.vartype == "integer" else "a"
                allowed = f" ({article} {info.vartype} from {info.minimum} to {info.maximum}"
                allowed += ", units allowed)" if info.vartype == "integer" else ")"
            elif info is not None and info.vartype == "bool":
                allowed = " (on or off)"
            yield where, f"{value_text(value)!r}: the server says: {complaint}{allowed}"


def located(path: Path, problems: list[tuple[Loc, str]]) -> TopologyError:
    """The first of ``problems`` as a topology error naming ``path`` and the line (the file is
    read again: the model keeps no lines)."""
    where, message = problems[0]
    try:
        _, lines = compose(path.read_text(encoding="utf-8"), path)
    except (OSError, UnicodeDecodeError, TopologyError):
        lines = {}
    lines.setdefault((), 1)
    return TopologyError(messages_located(path, lines, where, message, len(problems) - 1))


UPGRADE_PATH = "docs/commands.md#major-version-upgrades"
"""Where the documented way from one major version to the next is."""


def major_change(node: str, data_major: int, catalog: ServerCatalog) -> str:
    """Why ``up`` refuses to start ``node``'s data (written by ``data_major``) with the image."""
    return (
        f"{node}: its data is PostgreSQL {data_major} and {catalog.image} is PostgreSQL "
        f"{catalog.major}: a major version change is not a restart; dump and restore into a new "
        f"cluster, or pg_upgrade by hand (see {UPGRADE_PATH}); nothing changed"
    )
