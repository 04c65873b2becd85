"""Which ``status`` invocations run without typer (:func:`shardctl.cli.statusrun.plain_args`):
exactly the forms typer would parse to the same values; every other goes to the typer app."""

from __future__ import annotations

from pathlib import Path

import pytest

from shardctl.cli.statusrun import Args, WideOutput, plain_args


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["status"], Args(None, WideOutput.TABLE, False)),
        (["status", "-o", "json"], Args(None, WideOutput.JSON, False)),
        (["status", "--output=wide"], Args(None, WideOutput.WIDE, False)),
        # the last of an option given twice wins
        (["status", "--output", "wide", "-o", "json"], Args(None, WideOutput.JSON, False)),
        (["-f", "a.yaml", "status"], Args(Path("a.yaml"), WideOutput.TABLE, False)),
        (["--topology=a.yaml", "-v", "status"], Args(Path("a.yaml"), WideOutput.TABLE, True)),
        # the command's own -f wins over the root's, wherever it stands
        (
            ["-f", "root.yaml", "status", "-f", "own.yaml"],
            Args(Path("own.yaml"), WideOutput.TABLE, False),
        ),
        (
            ["status", "--topology", "own.yaml", "-o", "wide"],
            Args(Path("own.yaml"), WideOutput.WIDE, False),
        ),
    ],
)
def test_plain_forms(argv: list[str], expected: Args) -> None:
    assert plain_args(argv) == expected


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["up"],
        ["status", "--watch"],
        ["status", "--watch", "5"],
        ["status", "-h"],
        ["status", "--help"],
        ["--help", "status"],
        ["status", "-o", "yaml"],  # typer's usage error names the choices
        ["status", "-o"],
        ["status", "-f"],
        ["status", "-f", "-o"],
        ["status", "-ojson"],  # click's attached short form: left to click
        ["status", "-f=a.yaml"],
        ["status", "extra"],
        ["status", "status"],
        ["status", "-v"],  # -v is the root's: after the command click refuses it
        ["-o", "json", "status"],  # -o is status's own: before it click refuses it
        ["help", "status"],
        ["--version"],
    ],
)
def test_every_other_form_goes_to_typer(argv: list[str]) -> None:
    assert plain_args(argv) is None


def test_completion_goes_to_typer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("_SHARDCTL_COMPLETE", "complete_bash")
    assert plain_args(["status"]) is None
