"""Option values coerced without pydantic (shardctl.cli.coerce) come out exactly as typer's own
coercion makes them, and every value it does not take plainly gets typer's own error."""

from __future__ import annotations

from typing import Any

import pytest
import typer.main
from typer._coercion import build_runtime_param

from shardctl.cli import app, coerce

SAMPLES: dict[str, tuple[Any, ...]] = {
    "int": ("5", "-3", "007", "abc", "1e3", " 7", "", 5, True),
    "float": ("2", "2.5", "-0.5", "inf", "nan", "1e3", "x", ".5", 2.0, 3),
    "str": ("abc", "", "-", 7),
    "bool": (True, False, "true", "no"),
    "path": ("topology.yaml", "./topology.yaml", "no/such/file", "", "-", ".", "a//b"),
}


def _every_quick_param() -> list[tuple[str, Any, Any]]:
    group: Any = typer.main.get_command(app)
    ctx = group.make_context("shardctl", ["--help"], resilient_parsing=True)
    found = []
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        for param in command.get_params(ctx):
            if isinstance(param._runtime_param, coerce.Quick):
                found.append((f"{name} {param.name}", param, command))
    return found


def _outcome(runtime: Any, value: Any, param: Any, ctx: Any) -> tuple[str, str]:
    """What coercing ``value`` gave: the value (its type and repr: nan is never equal to
    itself), or the error's type and message."""
    try:
        got = runtime.coerce(value, param=param, ctx=ctx)
    except Exception as exc:  # the error itself is what is compared
        return type(exc).__name__, str(exc)
    return type(got).__name__, repr(got)


QUICK = _every_quick_param()


def test_the_commands_plain_options_are_coerced_quickly() -> None:
    kinds = {param._runtime_param._kind for _, param, _ in QUICK}
    assert {"choice", "int", "float", "path", "str", "bool"} <= kinds


@pytest.mark.parametrize(("label", "param", "command"), QUICK, ids=[q[0] for q in QUICK])
def test_quick_coercion_is_typers_own(label: str, param: Any, command: Any) -> None:
    ctx = command.make_context(command.name, [], resilient_parsing=True)
    quick = param._runtime_param
    kind = quick._kind
    samples = (
        (*(str(getattr(c, "value", c)) for c in quick._choices), "nope", *quick._choices)
        if kind == "choice"
        else SAMPLES[kind]
    )
    typers = build_runtime_param(param.type_descriptor)
    for value in (*samples, None):
        got = _outcome(quick, value, param, ctx)
        assert got == _outcome(typers, value, param, ctx), (label, value)
        if kind == "path" and value:
            assert got[0] in ("PosixPath", "WindowsPath", "BadParameter"), (value, got)
