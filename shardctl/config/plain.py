"""The topology model without pydantic: frozen models (:class:`Spec`) whose fields say what
they accept, and the plain check that turns a file valid as written into them.

Each field of :mod:`shardctl.config.schema`'s models says what it accepts (a :class:`Kind`).
The check is deliberately narrower than pydantic's lax mode: it takes a value only when it has
exactly the type YAML gives for a valid file (text, an integer, a finite number, a boolean, a
list, a mapping) and meets the field's bounds; anything else, valid or not, it *declines*.
A declined file goes to the pydantic models (:mod:`shardctl.config.shape`, built from the same
declarations), which either name the problem in the one line they always did or accept it
(``port: "5432"``, ``vnodes: 1.0``), in which case :func:`from_model` turns their result into
the same models. So what is valid, what a value becomes and every error message stay
pydantic's; the plain check spares a valid file pydantic's import and model building (most of
``validate``'s start-up), and :class:`Spec` spares it a generated dataclass per model.
``tests/unit/config/test_plain.py`` holds the two to the same results.
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable
from enum import StrEnum
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar, dataclass_transform

if TYPE_CHECKING:
    from pydantic import BaseModel

T = TypeVar("T")
S = TypeVar("S", bound="Spec")

GIVEN = "given"
"""A model field that records which keys the file gave (pydantic's ``model_fields_set``)."""
_MISSING: Any = object()


class Decline(Exception):
    """The plain check does not vouch for a value: pydantic decides."""


class Kind:
    """What one field accepts."""

    def check(self, value: object) -> object:
        """The field's value for ``value`` as the file gives it; raise :class:`Decline`."""
        raise NotImplementedError

    def convert(self, value: Any) -> object:
        """The field's value for what pydantic made of it."""
        return value


class Text(Kind):
    """A string, matching ``pattern`` (anchored ``^...$``) and at least ``min_length`` long."""

    def __init__(self, pattern: str | None = None, min_length: int = 0) -> None:
        self.pattern, self.min_length = pattern, min_length

    def check(self, value: object) -> object:
        if type(value) is not str or len(value) < self.min_length:
            raise Decline
        # fullmatch: with '$', re.search would also take a trailing newline, pydantic does not
        if self.pattern is not None and _regex(self.pattern).fullmatch(value) is None:
            raise Decline
        return value


class Integer(Kind):
    """An integer (not a boolean) within the bounds."""

    def __init__(self, ge: int | None = None, le: int | None = None) -> None:
        self.ge, self.le = ge, le

    def check(self, value: object) -> object:
        if type(value) is not int or not _within(value, self.ge, None, self.le):
            raise Decline
        return value


class Number(Kind):
    """A finite integer or float within the bounds, as a float."""

    def __init__(
        self, ge: float | None = None, gt: float | None = None, le: float | None = None
    ) -> None:
        self.ge, self.gt, self.le = ge, gt, le

    def check(self, value: object) -> object:
        if type(value) is not float and type(value) is not int:
            raise Decline
        try:
            number = float(value)
        except OverflowError:
            raise Decline from None
        if not math.isfinite(number) or not _within(number, self.ge, self.gt, self.le):
            raise Decline
        return number


class Flag(Kind):
    """A boolean."""

    def check(self, value: object) -> object:
        if type(value) is not bool:
            raise Decline
        return value


class Choice(Kind):
    """One of an enumeration's values, written as text."""

    def __init__(self, enum: type[StrEnum]) -> None:
        self.enum = enum

    def check(self, value: object) -> object:
        if type(value) is not str:
            raise Decline
        try:
            return self.enum(value)
        except ValueError:
            raise Decline from None


class Setting(Kind):
    """A server setting's value: text, an integer, a float or a boolean, kept as it is."""

    def check(self, value: object) -> object:
        if type(value) not in (str, int, float, bool):
            raise Decline
        return value


class Optional(Kind):
    """``inner`` or null."""

    def __init__(self, inner: Kind) -> None:
        self.inner = inner

    def check(self, value: object) -> object:
        return None if value is None else self.inner.check(value)

    def convert(self, value: Any) -> object:
        return None if value is None else self.inner.convert(value)


class Items(Kind):
    """A list of ``inner``, as a tuple."""

    def __init__(self, inner: Kind, min_length: int = 0) -> None:
        self.inner, self.min_length = inner, min_length

    def check(self, value: object) -> object:
        if type(value) is not list or len(value) < self.min_length:
            raise Decline
        return tuple(self.inner.check(item) for item in value)

    def convert(self, value: Any) -> object:
        return tuple(self.inner.convert(item) for item in value)


class Table(Kind):
    """A mapping of ``keys`` to ``values``."""

    def __init__(self, keys: Kind, values: Kind) -> None:
        self.keys, self.values = keys, values

    def check(self, value: object) -> object:
        if type(value) is not dict:
            raise Decline
        return {self.keys.check(k): self.values.check(v) for k, v in value.items()}

    def convert(self, value: Any) -> object:
        return {k: self.values.convert(v) for k, v in value.items()}


class Model(Kind):
    """A mapping that is one of the model's dataclasses."""

    def __init__(self, model: type[Spec]) -> None:
        self.model = model

    def check(self, value: object) -> object:
        return build(self.model, value)

    def convert(self, value: Any) -> object:
        return from_model(self.model, value)


class Form(Kind):
    """The short form (an enumeration's value) or the long one (a mapping), as pydantic's
    discriminator in :mod:`shardctl.config.shape` tells them apart; ``tags`` name the two in
    its error locations (not keys of the file: :mod:`shardctl.config.messages` drops them)."""

    def __init__(self, short: Choice, long: Model, tags: tuple[str, str]) -> None:
        self.short, self.long, self.tags = short, long, tags

    def check(self, value: object) -> object:
        return (self.long if isinstance(value, dict) else self.short).check(value)

    def convert(self, value: Any) -> object:
        return value if isinstance(value, StrEnum) else self.long.convert(value)


class _Field:
    """What :func:`spec` declares; replaced by the default on the class."""

    __slots__ = ("default", "description", "factory", "key", "kind")

    def __init__(
        self,
        kind: Kind,
        default: object,
        factory: Callable[[], object] | None,
        key: str | None,
        description: str | None,
    ) -> None:
        self.kind, self.default, self.factory, self.key = kind, default, factory, key
        self.description = description


def spec(
    kind: Kind,
    *,
    default: Any = _MISSING,
    factory: Callable[[], Any] | None = None,
    key: str | None = None,
    description: str | None = None,
) -> Any:
    """A model field: what it accepts, its default (or ``factory``), the file's ``key`` for it
    when it is not the field's name, and what it means (docs/topology.schema.json)."""
    return _Field(kind, default, factory, key, description)


@dataclass_transform(kw_only_default=True, frozen_default=True, field_specifiers=(spec,))
class Spec:
    """A frozen model of part of the file: keyword construction, equality and hash by fields,
    a dataclass's repr; fields declared with :func:`spec` (a plain default: a field the file
    cannot set). What a dataclass would generate per class, done once here, so that the
    models cost next to nothing to define."""

    _fields: ClassVar[tuple[str, ...]] = ()
    """Every field, in declared order."""
    _defaults: ClassVar[dict[str, tuple[object, Callable[[], object] | None]]] = {}
    _keys: ClassVar[dict[str, str]] = {}
    """The file's key -> field name, for the fields the file sets."""
    _kinds: ClassVar[dict[str, Kind]] = {}
    _descriptions: ClassVar[dict[str, str]] = {}
    _required: ClassVar[frozenset[str]] = frozenset()

    def __init_subclass__(cls) -> None:
        super().__init_subclass__()
        fields, defaults = list(cls._fields), dict(cls._defaults)
        keys, kinds, descriptions = dict(cls._keys), dict(cls._kinds), dict(cls._descriptions)
        for name in inspect.get_annotations(cls):  # its own, in declared order
            declared = cls.__dict__.get(name, _MISSING)
            fields.append(name)
            if isinstance(declared, _Field):
                keys[declared.key or name] = name
                kinds[name] = declared.kind
                if declared.description is not None:
                    descriptions[name] = declared.description
                default, factory = declared.default, declared.factory
            else:
                default, factory = declared, None
            if default is not _MISSING or factory is not None:
                defaults[name] = (default, factory)
            if isinstance(declared, _Field):
                if default is _MISSING:
                    delattr(cls, name)
                else:
                    setattr(cls, name, default)
        cls._fields, cls._defaults, cls._keys, cls._kinds = tuple(fields), defaults, keys, kinds
        cls._descriptions = descriptions
        cls._required = frozenset(kinds.keys() - defaults.keys())

    def __init__(self, **values: Any) -> None:
        for name in self._fields:
            if name in values:
                value = values.pop(name)
            elif name in self._defaults:
                default, factory = self._defaults[name]
                value = factory() if factory is not None else default
            else:
                raise TypeError(f"{type(self).__name__}() missing keyword argument {name!r}")
            object.__setattr__(self, name, value)
        if values:
            raise TypeError(f"{type(self).__name__}() got unexpected arguments {sorted(values)}")

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is frozen: cannot assign to {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is frozen: cannot delete {name!r}")

    def _values(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self._fields if name != GIVEN)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, Spec)
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash((type(self), self._values()))

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{name}={getattr(self, name)!r}" for name in self._fields if name != GIVEN
        )
        return f"{type(self).__name__}({shown})"

    def replace(self: S, **changes: Any) -> S:
        """This model with ``changes`` (not checked, as pydantic's ``model_copy(update=)``)."""
        values = {name: getattr(self, name) for name in self._fields}
        return type(self)(**(values | changes))

    def as_data(self) -> dict[str, Any]:
        """The fields as plain data, nested models as mappings (pydantic's ``model_dump()``)."""
        return {name: _data(getattr(self, name)) for name in self._fields if name != GIVEN}


def _data(value: object) -> object:
    if isinstance(value, Spec):
        return value.as_data()
    if isinstance(value, tuple):
        return tuple(_data(v) for v in value)
    if isinstance(value, dict):
        return {k: _data(v) for k, v in value.items()}
    return value


def build(model: type[S], data: object) -> S:
    """``data`` (a mapping as YAML gives it) as ``model``; raise :class:`Decline`."""
    if type(data) is not dict:
        raise Decline
    keys, kinds = model._keys, model._kinds
    values: dict[str, Any] = {}
    for key, value in data.items():
        name = keys.get(key) if type(key) is str else None
        if name is None:
            raise Decline
        values[name] = kinds[name].check(value)
    if not model._required <= values.keys():
        raise Decline
    if GIVEN in model._defaults:
        values[GIVEN] = frozenset(values)
    return model(**values)


def from_model(model: type[S], validated: BaseModel) -> S:
    """What pydantic validated (the twin :mod:`shardctl.config.shape` built of ``model``) as
    ``model``."""
    values: dict[str, Any] = {
        name: kind.convert(getattr(validated, name)) for name, kind in model._kinds.items()
    }
    if GIVEN in model._defaults:
        values[GIVEN] = frozenset(validated.model_fields_set)
    return model(**values)


_REGEXES: dict[str, re.Pattern[str]] = {}


def _regex(pattern: str) -> re.Pattern[str]:
    compiled = _REGEXES.get(pattern)
    if compiled is None:
        compiled = _REGEXES[pattern] = re.compile(pattern)
    return compiled


def _within(value: float, ge: float | None, gt: float | None, le: float | None) -> bool:
    return (
        (ge is None or value >= ge) and (gt is None or value > gt) and (le is None or value <= le)
    )
