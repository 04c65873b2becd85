"""The shape of ``topology.yaml`` as pydantic models, with their bounds and descriptions:
exported as docs/topology.schema.json, and what explains a file the plain check
(:mod:`shardctl.config.plain`) declines, in pydantic's words turned into one line per problem
(:mod:`shardctl.config.messages`). A valid file never needs these.

Nothing is declared here: each model is built from its twin in :mod:`shardctl.config.schema`
(the one definition of the file's keys), field by field from what it accepts (a
:class:`~shardctl.config.plain.Kind`), with the same name, docstring, default and description.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, create_model
from pydantic.fields import FieldInfo

from shardctl.config import schema
from shardctl.config.plain import (
    Choice,
    Flag,
    Form,
    Integer,
    Items,
    Kind,
    Model,
    Number,
    Optional,
    Setting,
    Spec,
    Table,
    Text,
)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


MODELS: dict[type[Spec], type[BaseModel]] = {}
"""Each plain model's pydantic twin, built once."""


def model_of(twin: type[Spec]) -> type[BaseModel]:
    """The pydantic model of ``twin`` (and of the models it nests)."""
    built = MODELS.get(twin)
    if built is None:
        keys = {name: key for key, name in twin._keys.items()}
        fields = {name: _field(twin, name, kind, keys[name]) for name, kind in twin._kinds.items()}
        built = MODELS[twin] = create_model(  # type: ignore[call-overload]
            twin.__name__, __base__=_Model, __doc__=twin.__doc__, __module__=__name__, **fields
        )
    return built


def _field(twin: type[Spec], name: str, kind: Kind, key: str) -> tuple[Any, FieldInfo]:
    """``name``'s type and its default, the file's key for it and its description."""
    extra: dict[str, Any] = {}
    if name in twin._defaults:
        default, factory = twin._defaults[name]
        if factory is not None:
            extra["default_factory"] = factory
        elif isinstance(default, Spec):  # a nested model's default: its pydantic twin's
            extra["default"] = model_of(type(default)).model_validate(default.as_data())
        else:
            extra["default"] = default
    if key != name:
        extra["alias"] = key
    info: FieldInfo = Field(description=twin._descriptions.get(name), **extra)
    return _annotation(kind), info


def _constrained(base: Any, **bounds: object) -> Any:
    given = {k: v for k, v in bounds.items() if v is not None}
    return Annotated[base, Field(**given)] if given else base  # type: ignore[call-overload]


def _annotation(kind: Kind) -> Any:
    """The type (with its bounds) pydantic validates what ``kind`` accepts as."""
    if isinstance(kind, Text):
        return _constrained(str, pattern=kind.pattern, min_length=kind.min_length or None)
    if isinstance(kind, Integer):
        return _constrained(int, ge=kind.ge, le=kind.le)
    if isinstance(kind, Number):
        return _constrained(float, ge=kind.ge, gt=kind.gt, le=kind.le)
    if isinstance(kind, Flag):
        return bool
    if isinstance(kind, Choice):
        return kind.enum
    if isinstance(kind, Setting):
        return str | int | float | bool
    if isinstance(kind, Optional):
        return _annotation(kind.inner) | None
    if isinstance(kind, Items):
        items: Any = tuple[_annotation(kind.inner), ...]  # type: ignore[misc]
        return _constrained(items, min_length=kind.min_length or None)
    if isinstance(kind, Table):
        return dict[_annotation(kind.keys), _annotation(kind.values)]  # type: ignore[misc]
    if isinstance(kind, Model):
        return model_of(kind.model)
    if isinstance(kind, Form):
        short, long = kind.tags
        model = model_of(kind.long.model)
        return Annotated[
            Annotated[kind.short.enum, Tag(short)] | Annotated[model, Tag(long)],
            Discriminator(_form(short, long, model)),
        ]
    raise TypeError(f"no pydantic type for {kind!r}")


def _form(short: str, long: str, model: type[BaseModel]) -> Callable[[object], str]:
    """Which of a :class:`~shardctl.config.plain.Form`'s two forms ``value`` is written in."""
    return lambda value: long if isinstance(value, Mapping | model) else short


TopologySpec = model_of(schema.TopologySpec)
"""The whole file; every other model is nested in it (and in :data:`MODELS`)."""
