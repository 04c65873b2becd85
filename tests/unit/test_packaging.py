"""The package declares what it imports: a user's fresh venv has nothing else.

This machine has extra packages system-wide, which once hid a missing dependency (click) from
CI. Here every third-party module imported under ``shardctl/`` must come from a distribution
that ``pyproject.toml`` declares by name.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib

from tests.conftest import REPO


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared_distributions() -> set[str]:
    """The distributions named in ``[project].dependencies``, without extras or versions."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return {
        _normalise(re.split(r"[\s\[<>=!~;]", dep, maxsplit=1)[0]) for dep in project["dependencies"]
    }


def imported_modules() -> dict[str, set[str]]:
    """Top-level third-party modules imported under shardctl/, with the files importing them."""
    found: dict[str, set[str]] = {}
    for path in sorted((REPO / "shardctl").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.partition(".")[0]
                if top not in sys.stdlib_module_names and top not in {"shardctl", "__future__"}:
                    found.setdefault(top, set()).add(str(path.relative_to(REPO)))
    return found


def test_every_imported_module_belongs_to_a_declared_dependency() -> None:
    declared = declared_distributions()
    providers = importlib.metadata.packages_distributions()
    undeclared = {
        module: sorted(files)
        for module, files in imported_modules().items()
        if not {_normalise(dist) for dist in providers.get(module, [])} & declared
    }
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"


def test_the_check_sees_the_dependencies_it_should() -> None:
    """Guard against a check that passes because it found nothing to check."""
    modules = imported_modules()
    assert {"typer", "psycopg", "yaml", "pydantic", "docker"} <= modules.keys()
    assert "click" not in modules
