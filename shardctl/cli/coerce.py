"""Option values without a pydantic ``TypeAdapter`` per option: typer (0.29) coerces every value
it parses through one, built at parse time, which costs more than parsing the topology.

For the plain types shardctl's options have (text, a flag, an integer or a number without
typer's own bounds, a path, a choice), the value is coerced here by typer's own pydantic-free
helpers. Any other type, any value that is not plainly valid and any error goes to typer's own
coercion, so what is accepted and every error message stay typer's, word for word. On a typer
without per-parameter coercion objects (older releases) :func:`install` does nothing.
"""

from __future__ import annotations

import re
from enum import Enum
from pathlib import Path
from typing import Any, Literal, get_origin

_INTEGER = re.compile(r"-?[0-9]+")
_NUMBER = re.compile(r"-?[0-9]+(\.[0-9]+)?")


class Quick:
    """A parameter's coercion: the plain case here, anything else by typer's own (built on
    first need)."""

    def __init__(self, param: Any, kind: str, choices: tuple[Any, ...] = ()) -> None:
        self._param = param
        self._kind = kind
        self._choices = choices
        self._typers: Any = None

    def coerce(self, value: Any, param: Any, ctx: Any) -> Any:
        """The coerced value (typer's ``RuntimeParam.coerce``)."""
        if value is None:
            return () if param.multiple or param.nargs == -1 else None
        try:
            return self._quick(value, param, ctx)
        except (ValueError, LookupError):
            return self._full().coerce(value, param=param, ctx=ctx)

    def _quick(self, value: Any, param: Any, ctx: Any) -> Any:
        from typer import _param_types as types

        info = self._param.type_descriptor.parameter_info
        kind = self._kind
        if kind == "choice":
            sensitive = bool(info.case_sensitive)
            return types.coerce_cli_choice(
                value, choices=self._choices, case_sensitive=sensitive, ctx=ctx
            )
        if kind == "str" and isinstance(value, str):
            return value
        if kind in ("bool", "int", "float") and type(value).__name__ == kind:
            return value
        if kind == "int" and isinstance(value, str) and _INTEGER.fullmatch(value):
            return int(value)
        if kind == "float" and isinstance(value, str) and _NUMBER.fullmatch(value):
            return float(value)
        if kind == "path" and isinstance(value, str) and value and self._plain_path(info):
            path = Path(value)
            if str(path) == value:  # typer's messages quote the value as given
                try:
                    return types.coerce_cli_path(path, info, path_type=Path, param=param, ctx=ctx)
                except Exception as exc:  # typer's BadParameter: typer says it, below
                    raise ValueError(value) from exc
        raise LookupError(kind)

    @staticmethod
    def _plain_path(info: Any) -> bool:
        return not (info.resolve_path or info.allow_dash or info.path_type is not None)

    def _full(self) -> Any:
        if self._typers is None:
            from typer._coercion import build_runtime_param

            self._typers = build_runtime_param(self._param.type_descriptor)
        return self._typers


def _kind(descriptor: Any) -> tuple[str, tuple[Any, ...]] | None:
    """What :class:`Quick` does for this parameter, None when it is typer's alone."""
    annotation, info = descriptor.annotation, descriptor.parameter_info
    if descriptor.file_annotation is not None or info.parser is not None:
        return None
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return "choice", tuple(annotation)
    if get_origin(annotation) is Literal:
        return "choice", tuple(annotation.__args__)
    if annotation is str:
        return "str", ()
    if annotation is bool:
        return "bool", ()
    if annotation in (int, float):
        plain = info.min is None and info.max is None and not info.clamp
        return (annotation.__name__, ()) if plain else None
    if annotation is Path:
        return "path", ()
    return None


def install(params: Any) -> None:
    """Give each of ``params`` (a command's) the quick coercion where its type is plain."""
    for param in params:
        descriptor = getattr(param, "type_descriptor", None)
        if descriptor is None or getattr(param, "_runtime_param", False) is not None:
            continue  # older typer, or coercion already chosen
        found = _kind(descriptor)
        if found is not None:
            param._runtime_param = Quick(param, *found)
