"""The layout is the architecture: every subpackage is a layer with a one-line job, and each
has its import rule as an import-linter contract (``lint-imports``, run by CI)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

from tests.conftest import REPO

PACKAGE = REPO / "shardctl"
LAYERS = sorted(p.parent.name for p in PACKAGE.glob("*/__init__.py"))


def contracts() -> list[dict[str, object]]:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    return list(config["tool"]["importlinter"]["contracts"])


def test_every_layer_has_a_docstring_naming_its_job() -> None:
    for name in LAYERS:
        text = (PACKAGE / name / "__init__.py").read_text()
        assert text.startswith('"""') and len(text.split('"""')[1].strip()) > 20, name


def test_every_layer_but_the_cli_has_its_own_contract() -> None:
    sources = {str(c["source_modules"][0]) for c in contracts()}  # type: ignore[index]
    assert {f"shardctl.{name}" for name in LAYERS if name != "cli"} <= sources


def test_the_contracts_hold() -> None:
    linter = Path(sys.executable).parent / "lint-imports"  # installed with the dev extra
    done = subprocess.run([str(linter)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout
