"""The import rules docs/architecture.md draws, enforced: each module imports only from the
layers below it, so the graph a newcomer reads is the graph the code has."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

PACKAGE = REPO / "shardctl"

LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors", "text", "ring", "waiting", "deadlines", "reshard", "yamlsource"),
    ("topology", "ringsql", "faults", "reshard.plan"),
    ("credentials", "engine"),
    ("pg", "poolers"),
    ("fence", "containers", "health", "pools"),
    ("catalog", "checks", "provisioning", "reshard.transfer", "compose", "inflight"),
    ("distribution", "verify", "watcher", "reshard.coordinator"),
    ("router", "failover"),
    ("ledger", "cluster"),
    ("load", "reshard.joining", ""),  # "" is the package itself (shardctl/__init__.py)
    ("reshard.leaving",),  # remove-shard: the reshard, then add-shard's way of editing the file
)
"""Lowest first. ``cli`` and ``__main__`` sit on top and may import anything."""

ROUTER = ("router", "watcher", "pools")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def runtime_imports(path: Path) -> set[str]:
    """Every module imported by ``path`` (lazily too), except under ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text(), str(path))
    typing_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            typing_only |= {id(inner) for inner in ast.walk(node)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from shardctl import pg` imports the module shardctl.pg; `from shardctl.x
            # import y` imports shardctl.x (y is a name in it, unless it is a module too).
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                found.add(full if _is_module(full) else node.module)
    return found


def _is_module(dotted: str) -> bool:
    if not dotted.startswith("shardctl."):
        return False
    relative = Path(*dotted.split(".")[1:])
    return (PACKAGE / relative).with_suffix(".py").exists() or (PACKAGE / relative).is_dir()


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def shardctl_imports(path: Path) -> set[str]:
    relative = {
        name.removeprefix("shardctl").removeprefix(".")
        for name in runtime_imports(path)
        if name == "shardctl" or name.startswith("shardctl.")
    }
    return {name for name in relative if name in MODULES}


def is_cli(name: str) -> bool:
    return name == "__main__" or name == "cli" or name.startswith("cli.")


def test_every_module_has_a_layer() -> None:
    placed = {name for layer in LAYERS for name in layer}
    missing = sorted(name for name in MODULES if name not in placed and not is_cli(name))
    assert missing == [], f"add these modules to LAYERS and docs/architecture.md: {missing}"


def test_each_module_imports_only_from_lower_layers() -> None:
    level = {name: i for i, layer in enumerate(LAYERS) for name in layer}
    uphill = [
        f"{name} (layer {level[name]}) imports {dep} (layer {level[dep]})"
        for name, path in MODULES.items()
        if not is_cli(name)
        for dep in sorted(shardctl_imports(path))
        if not is_cli(dep) and level.get(dep, -1) >= level[name] and dep != name
    ]
    cli_from_library = [
        f"{name} imports {dep}"
        for name, path in MODULES.items()
        if not is_cli(name)
        for dep in shardctl_imports(path)
        if is_cli(dep)
    ]
    assert uphill == [] and cli_from_library == [], uphill + cli_from_library


def test_rich_only_in_the_cli_and_docker_only_in_engine() -> None:
    offenders = []
    for name, path in MODULES.items():
        tops = {imported.partition(".")[0] for imported in runtime_imports(path)}
        if "rich" in tops and not is_cli(name):
            offenders.append(f"{name} imports rich")
        if tops & {"docker", "requests"} and name != "engine":
            offenders.append(f"{name} imports the Docker SDK")
    assert offenders == []


def test_the_router_imports_no_cli_coordinator_or_cluster() -> None:
    for name in ROUTER:
        deps = shardctl_imports(MODULES[name])
        assert not {d for d in deps if is_cli(d) or d.startswith("reshard") or d == "cluster"}, (
            name,
            deps,
        )


def test_the_rules_see_real_imports() -> None:
    """Guard against a check that passes because it parsed nothing."""
    assert {"watcher", "pools", "fence"} <= shardctl_imports(MODULES["router"])
    assert "TYPE_CHECKING" in MODULES["router"].read_text()
    assert "cluster" not in shardctl_imports(MODULES["router"])  # typing-only import skipped
