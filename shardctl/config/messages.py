"""Every topology problem as one line: ``file:line: where: what was expected``.

The YAML is composed with line numbers (:mod:`shardctl.config.yamlsource`); pydantic's errors
are ranked, described in words and placed at the line of the key they concern. pydantic is
imported only to explain a file (:mod:`shardctl.config.shape`): a valid one never needs it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from types import UnionType
from typing import TYPE_CHECKING, Annotated, Any, Union, get_args, get_origin

from shardctl.config import yamlsource
from shardctl.errors import TopologyError

if TYPE_CHECKING:
    from pydantic import BaseModel
    from pydantic_core import ErrorDetails

Loc = yamlsource.Loc

EXTENSION_PREFIX = "x-"
"""Top-level keys starting with this are ignored, as in compose files: a place for anchors."""
MAX_MESSAGE = 2000
"""Longest error message: whatever the file holds, the answer stays a line or two."""


def compose(text: str, path: Path) -> tuple[dict[str, Any], dict[Loc, int]]:
    """Parse YAML into plain data plus the 1-based line of every mapping key and item."""
    try:
        data, lines = yamlsource.load(text)
    except yamlsource.YamlProblem as problem:
        raise yaml_error(path, problem) from None
    if data is None:
        raise TopologyError(
            f"{shown(path)}:1: the file is empty; "
            "expected a mapping with at least 'cluster' and 'shards'"
        )
    if not isinstance(data, dict):
        got = "a list" if isinstance(data, list) else f"the value {yamlsource.short(data)}"
        raise TopologyError(
            f"{shown(path)}:{lines.get((), 1)}: expected a mapping of topology keys "
            f"(cluster, shards, ...), got {got}"
        )
    return {k: v for k, v in data.items() if not k.startswith(EXTENSION_PREFIX)}, lines


def yaml_error(path: Path, problem: yamlsource.YamlProblem) -> TopologyError:
    """A reader problem as ``file:line: message (column c)``: the column where it helps."""
    if problem.line is None:
        return TopologyError(_clamp(f"{shown(path)}: {problem.message}"))
    column = f" (column {problem.column})" if problem.column and problem.column > 1 else ""
    return TopologyError(_clamp(f"{shown(path)}:{problem.line}: {problem.message}{column}"))


def shown(path: Path) -> str:
    """The path as messages name it: whole, unless it is absurdly long."""
    text = str(path)
    return text if len(text) <= 200 else f"{text[:100]}...{text[-60:]}"


def _clamp(message: str) -> str:
    """At most two lines and :data:`MAX_MESSAGE` characters, whatever went into ``message``."""
    lines = message.splitlines()[:2]
    out = "\n".join(
        line if len(line) <= MAX_MESSAGE // 2 else line[: MAX_MESSAGE // 2] + "..."
        for line in lines
    )
    return out


def rank(errors: list[ErrorDetails]) -> list[ErrorDetails]:
    """Most telling first: an unknown key (likely a typo) explains a 'missing' one elsewhere."""
    # pydantic also reports a list as too short when one of its items failed; drop that echo.
    errors = [
        e
        for e in errors
        if not (
            e["type"] == "too_short"
            and any(o["loc"][: len(e["loc"])] == e["loc"] and o is not e for o in errors)
        )
    ]
    return sorted(errors, key=lambda e: e["type"] != "extra_forbidden")


def describe(error: ErrorDetails) -> tuple[Loc, str]:
    """Turn one pydantic error into (location, message a person can act on)."""
    loc: Loc = tuple(error["loc"])
    if loc[:2] in (("tls", "mode"), ("tls", "files")):
        loc = ("tls", *loc[2:])  # the form's tag (schema.TLS), not a key of the file
    # The form's tag of schema.REPLICATION, top level or a shard's: not a key of the file either.
    for at in (1, 3):
        if len(loc) > at and loc[at - 1] == "replication" and loc[at] in ("mode", "spec"):
            loc = (*loc[:at], *loc[at + 1 :])
            break
    kind = error["type"]
    given = error.get("input")
    if kind == "extra_forbidden":
        parent = _model_at(loc[:-1])
        allowed = (
            sorted(f.alias or name for name, f in parent.model_fields.items()) if parent else []
        )
        import difflib  # only a refused key needs a hint

        hint = difflib.get_close_matches(str(loc[-1])[:100], allowed, n=1)
        suggestion = (
            f"; did you mean {hint[0]!r}?" if hint else f"; expected one of: {', '.join(allowed)}"
        )
        return loc, f"unknown key {short(loc[-1])}{suggestion}"
    if kind == "missing":
        return loc, "this key is required"
    if loc and loc[0] == "credentials":
        # Whatever is written under credentials may be a password put in the wrong place.
        return loc, f"{error['msg'].lower()} (the value is not shown)"
    if loc and loc[0] == "postgres" and len(loc) > 2:
        # pydantic tries each type of the union in turn and names it in the location.
        return loc[:2], f"a server setting is text, a number or a boolean (got {_kind(given)})"
    if kind == "string_pattern_mismatch":
        return loc, (
            f"{short(given)} is not a valid name (expected lowercase letters, digits and '-', "
            "starting with a letter, at most 40)"
            if loc and _is_name(loc)
            else f"{short(given)} is not a valid SQL identifier (letters, digits, '_')"
        )
    if kind == "too_short" and loc == ("shards",):
        return loc, "at least one shard is required"
    if isinstance(given, bool) and kind == "string_type":
        return loc, f"expected text, got a boolean ({_BOOLEANS})"
    if given is None:
        return loc, error["msg"]
    if isinstance(given, bool):
        return loc, f"{error['msg'].lower()} (got a boolean: {_BOOLEANS})"
    return loc, f"{error['msg'].lower()} (got {short(given)})"


_BOOLEANS = "YAML reads unquoted yes/no/on/off/true/false as booleans; quote the value"


def short(value: object) -> str:
    """A value as messages quote it: a short excerpt, lists and mappings only named."""
    if isinstance(value, dict | list | tuple):
        return _kind(value)
    return yamlsource.short(value)


def _kind(value: object) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    if value is None:
        return "null"
    return yamlsource.short(value)


def strict_numbers(data: object, model: type[BaseModel], loc: Loc) -> Iterator[tuple[Loc, str]]:
    """Booleans where a number is expected, and numbers that are not finite.

    pydantic's lax mode reads True as 1, and YAML 1.1 reads ``yes`` as True, so ``replicas:
    yes`` would mean one replica; strict mode would also refuse the enums' strings, hence this
    walk over the data alongside the models' annotations.
    """
    if not isinstance(data, dict):
        return
    plan = _number_plan(model)
    for key, value in data.items():
        if key not in plan:
            continue
        expected, models = plan[key]
        here = (*loc, key)
        if expected and isinstance(value, bool):
            yield here, f"expected {expected}, got a boolean ({_BOOLEANS})"
        elif expected and isinstance(value, float) and not math.isfinite(value):
            yield here, f"expected a finite number (got {value})"
        for inner in models:
            items = value if isinstance(value, list) else [value]
            for i, item in enumerate(items):
                where = (*here, i) if isinstance(value, list) else here
                yield from strict_numbers(item, inner, where)


@cache
def _number_plan(model: type[BaseModel]) -> dict[str, tuple[str, tuple[type[BaseModel], ...]]]:
    """Per key (name and alias) of ``model``: 'an integer' / 'a number' where one is expected
    ('' elsewhere), and the models nested under it."""
    from pydantic import BaseModel

    plan: dict[str, tuple[str, tuple[type[BaseModel], ...]]] = {}
    for name, field in model.model_fields.items():
        types = _leaf_types(field.annotation)
        numeric = bool(types & {int, float}) and bool not in types
        expected = ("an integer" if int in types else "a number") if numeric else ""
        models = tuple(t for t in types if isinstance(t, type) and issubclass(t, BaseModel))
        for key in {name, field.alias or name}:
            plan[key] = (expected, models)
    return plan


def _leaf_types(annotation: object) -> set[object]:
    """The classes an annotation accepts: through Optional, unions, Annotated and tuples."""
    if get_origin(annotation) is Annotated:
        return _leaf_types(get_args(annotation)[0])
    origin = get_origin(annotation)
    if origin in (Union, UnionType, tuple, list):
        return {t for arg in get_args(annotation) if arg is not Ellipsis for t in _leaf_types(arg)}
    if origin is not None:  # dict and other containers: their values are not walked
        return {origin}
    return {annotation}


def _is_name(loc: Loc) -> bool:
    return loc == ("cluster",) or (len(loc) == 3 and loc[0] == "shards" and loc[2] == "name")


def _model_at(loc: Loc) -> type[BaseModel] | None:
    """The pydantic model class that validates the mapping at ``loc``."""
    from pydantic import BaseModel

    from shardctl.config.shape import TopologySpec

    model: type[BaseModel] = TopologySpec
    for part in loc:
        if isinstance(part, int):
            continue
        field = next((f for name, f in model.model_fields.items() if part in (name, f.alias)), None)
        if field is None:
            return None
        inner = field.annotation
        args = getattr(inner, "__args__", ())
        # Annotated members (a tagged union's) hold the class as their first argument.
        candidates = [inner, *args, *(first for a in args for first in get_args(a)[:1])]
        found = next(
            (c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None
        )
        if found is None:
            return None
        model = found
    return model


def located(path: Path, lines: dict[Loc, int], loc: Loc, message: str, more: int) -> str:
    """``file:line: dotted.path: message``, with the line of the nearest known location."""
    line = next(lines[loc[:i]] for i in range(len(loc), -1, -1) if loc[:i] in lines)
    where = _dotted(loc)
    text = f"{shown(path)}:{line}: {where + ': ' if where else ''}{message}"
    if more:
        text += f"\n  ({more} more problem{'s' if more > 1 else ''} after fixing this one)"
    return _clamp(text)


def _dotted(loc: Loc) -> str:
    out = ""
    for part in loc:
        name = part if isinstance(part, int) or len(part) <= 40 else f"{part[:40]}..."
        out += f"[{name}]" if isinstance(part, int) else (f".{name}" if out else str(name))
    return out
