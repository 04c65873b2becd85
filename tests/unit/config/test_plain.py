"""The plain topology model (shardctl.config.schema, checked by shardctl.config.plain) against
pydantic's, built from it (shardctl.config.shape): the same fields, keys and defaults; and for
every value the plain check takes, pydantic takes it too and makes the same of it, while
everything pydantic refuses the plain check declines (so its message stays pydantic's)."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from shardctl.config import plain, schema, shape, yamlsource
from shardctl.config.messages import EXTENSION_PREFIX, strict_numbers
from tests.conftest import REPO

TWINS: list[tuple[type[BaseModel], type[plain.Spec]]] = [
    (model, twin) for twin, model in shape.MODELS.items()
]

MINIMAL: dict[str, dict[str, Any]] = {
    "TopologySpec": {"cluster": "c", "shards": [{"name": "a"}]},
    "ShardSpec": {"name": "a"},
    "TableSpec": {"name": "t"},
    "ReplicationSpec": {"mode": "sync"},
    "EngineSpec": {"endpoint": "unix:///var/run/docker.sock"},
    "BackupSpec": {"repository": "repo"},
}
"""The least each model needs (the others need nothing)."""

VALUES: list[object] = [
    None,
    True,
    False,
    0,
    1,
    -1,
    2,
    9,
    10,
    100,
    101,
    150,
    3600,
    3601,
    10000,
    10001,
    36500,
    36501,
    54320,
    60000,
    60001,
    65535,
    65536,
    86400,
    86401,
    1_000_000,
    1_000_001,
    2**62,
    10**400,
    0.0,
    -0.0,
    0.5,
    1.0,
    5.0,
    -1.5,
    1e308,
    math.inf,
    -math.inf,
    math.nan,
    "",
    "a",
    "a\n",
    "A",
    "shard-0",
    "-a",
    "a" * 40,
    "a" * 41,
    "_x",
    "x" * 63,
    "x" * 64,
    "5",
    "1.5",
    "true",
    "10m",
    "0m",
    "1000000m",
    "10M",
    "sync",
    "async",
    "required",
    "preferred",
    "balanced",
    "md5",
    "MD5",
    "off",
    "hosts",
    "none",
    "verify-full",
    "transaction",
    "session",
    "manual",
    "automatic",
    "unix:///var/run/docker.sock",
    "tcp://host:2376",
    "ssh://u@h\n",
    "ftp://x",
    [],
    ["a"],
    ["a", 1],
    [{"name": "a"}],
    [{"name": "t", "key": "k"}],
    {},
    {"mode": "sync"},
    {"mode": "async", "durability": "preferred"},
    {"mode": "off"},
    {"name": "a"},
    {"a": 1, "b": 1.5, "c": True, "d": "x"},
    {"a": None},
    {1: "x"},
    {"local": {"endpoint": "unix:///var/run/docker.sock"}},
    {"Local": {"endpoint": "unix:///var/run/docker.sock"}},
    {"repository": "r", "retention": {"days": 1}},
    {"unknown": 1},
]


def _pydantic(model: type[BaseModel], data: dict[str, Any]) -> BaseModel | None:
    if list(strict_numbers(data, model, ())):
        return None  # refused before pydantic, as topology.parse does
    try:
        return model.model_validate(data)
    except ValidationError:
        return None


def _plain(model: type[plain.Spec], data: dict[str, Any]) -> plain.Spec | None:
    try:
        return plain.build(model, data)
    except plain.Decline:
        return None


def _givens(value: object) -> list[frozenset[str]]:
    """Every ReplicationSpec's keys given, in order, wherever it is nested."""
    if isinstance(value, schema.ReplicationSpec):
        return [value.given]
    if isinstance(value, plain.Spec):
        return [g for name in value._fields for g in _givens(getattr(value, name))]
    if isinstance(value, tuple):
        return [g for item in value for g in _givens(item)]
    return []


def _agree(pydantic_model: type[BaseModel], twin: type[plain.Spec], data: dict[str, Any]) -> None:
    mine = _plain(twin, data)
    theirs = _pydantic(pydantic_model, data)
    if theirs is None:
        assert mine is None, f"plain took what pydantic refuses: {data!r}"
    elif mine is not None:
        converted = plain.from_model(twin, theirs)
        assert mine == converted, data
        assert repr(mine) == repr(converted), data  # same types too (5 vs 5.0)
        assert _givens(mine) == _givens(converted), data


def test_every_plain_model_has_its_pydantic_twin() -> None:
    plain_models = {
        value
        for value in vars(schema).values()
        if isinstance(value, type) and issubclass(value, plain.Spec) and value is not plain.Spec
    }
    assert plain_models == set(shape.MODELS) and len(TWINS) == 15
    for model, twin in TWINS:
        assert model.__name__ == twin.__name__
        assert [f for f in twin._fields if f != plain.GIVEN] == list(model.model_fields)
        keys = {f.alias or name: name for name, f in model.model_fields.items()}
        assert twin._keys == keys, model.__name__
        required = {name for name, f in model.model_fields.items() if f.is_required()}
        assert twin._required == required, model.__name__
        assert twin.__doc__ == model.__doc__
        descriptions = {n: f.description for n, f in model.model_fields.items() if f.description}
        assert twin._descriptions == descriptions, model.__name__


@pytest.mark.parametrize(("model", "twin"), TWINS, ids=[m.__name__ for m, _ in TWINS])
def test_the_defaults_are_pydantics(model: type[BaseModel], twin: type[plain.Spec]) -> None:
    minimal = MINIMAL.get(model.__name__, {})
    made = plain.build(twin, minimal)
    assert made == plain.from_model(twin, model.model_validate(minimal))
    assert made.as_data() == model.model_validate(minimal).model_dump()


@pytest.mark.parametrize(("model", "twin"), TWINS, ids=[m.__name__ for m, _ in TWINS])
def test_every_value_of_every_field_as_pydantic_judges_it(
    model: type[BaseModel], twin: type[plain.Spec]
) -> None:
    minimal = MINIMAL.get(model.__name__, {})
    for key, value in itertools.product(twin._keys, VALUES):
        _agree(model, twin, {**minimal, key: value})
        _agree(model, twin, {k: v for k, v in minimal.items() if k != key})


def _documents() -> list[Path]:
    good = sorted((REPO / "tests" / "topologies" / "good").glob("*.yaml"))
    return [REPO / "topology.yaml", *good]


@pytest.mark.parametrize("path", _documents(), ids=lambda p: p.name)
def test_valid_files_take_the_plain_path_to_pydantics_model(path: Path) -> None:
    data, _ = yamlsource.load(yamlsource.decode(path.read_bytes()))
    data = {k: v for k, v in data.items() if not k.startswith(EXTENSION_PREFIX)}
    mine = plain.build(schema.TopologySpec, data)  # no Decline: pydantic is not needed
    theirs = plain.from_model(schema.TopologySpec, shape.TopologySpec.model_validate(data))
    assert mine == theirs and repr(mine) == repr(theirs)
    assert _givens(mine) == _givens(theirs)


def test_a_value_pydantic_coerces_comes_out_as_it_did() -> None:
    data = {"cluster": "c", "base_port": "6000", "shards": [{"name": "a", "replicas": 2.0}]}
    with pytest.raises(plain.Decline):
        plain.build(schema.TopologySpec, data)
    from shardctl.config.topology import parse

    spec = parse("cluster: c\nbase_port: '6000'\nshards: [{name: a, replicas: 2.0}]\n", Path("t"))
    assert spec.spec.base_port == 6000 and spec.spec.shards[0].replicas == 2


def test_the_models_are_frozen_and_compare_by_value() -> None:
    health = schema.HealthSpec()
    with pytest.raises(AttributeError):
        health.max_lag_bytes = 1  # type: ignore[misc]
    assert health.replace(max_lag_bytes=1) == schema.HealthSpec(max_lag_bytes=1) != health
    assert hash(schema.RingSpec()) == hash(schema.RingSpec())
    with pytest.raises(TypeError):
        schema.ShardSpec()  # type: ignore[call-arg]


def test_a_key_declared_once_is_pydantics_too() -> None:
    class ExtraSpec(plain.Spec):
        """A model written only in the plain form."""

        size: int = plain.spec(plain.Integer(ge=1, le=9), default=3, description="How many.")
        form: schema.Replication | schema.ReplicationSpec = plain.spec(
            schema.REPLICATION, default=schema.Replication.ASYNC
        )

    try:
        model = shape.model_of(ExtraSpec)
        assert model.__doc__ == ExtraSpec.__doc__
        size = model.model_json_schema()["properties"]["size"]
        assert size == {
            "default": 3,
            "description": "How many.",
            "maximum": 9,
            "minimum": 1,
            "title": "Size",
            "type": "integer",
        }
        assert plain.from_model(ExtraSpec, model.model_validate({"size": "4"})).size == 4
        made = plain.from_model(ExtraSpec, model.model_validate({"form": {"mode": "sync"}}))
        assert made.form == schema.ReplicationSpec(mode=schema.Replication.SYNC)
        with pytest.raises(ValidationError):
            model.model_validate({"size": 10})
    finally:
        shape.MODELS.pop(ExtraSpec, None)
