"""What starting ``shardctl`` costs: the modules ``--version`` and ``--help`` load, in a fresh
interpreter (the time itself is measured in benchmarks/cli_startup.py, never here)."""

from __future__ import annotations

from pathlib import Path

from shardctl.cli.replication import DEFAULTS
from shardctl.config.schema import HealthSpec
from tests.clusters import imported_by

EXAMPLE = Path(__file__).resolve().parents[3] / "topology.yaml"

HEAVY = ("psycopg", "psycopg_pool", "docker", "cryptography", "pydantic", "rich", "yaml")


def loaded(*args: str) -> set[str]:
    """The top-level packages a fresh interpreter has imported after ``shardctl *args``."""
    return {m.split(".")[0] for m in imported_by(*args)}


def test_version_imports_no_driver_sdk_model_or_terminal_library() -> None:
    assert loaded("--version") & set(HEAVY) == set()


def test_help_imports_no_driver_sdk_model_or_terminal_library() -> None:
    assert loaded("--help") & set(HEAVY) == set()
    assert loaded("help", "status") & set(HEAVY) == set()


def test_the_help_states_the_health_defaults_of_the_topology_model() -> None:
    health = HealthSpec()
    assert DEFAULTS["max_lag_bytes"] == "16MiB" and health.max_lag_bytes == 16 * 1024**2
    assert DEFAULTS["max_lag_seconds"] == health.max_lag_seconds
    assert DEFAULTS["canary_timeout"] == health.canary_timeout
    assert DEFAULTS["probe_timeout"] == health.probe_timeout


def test_the_monitors_interval_default_is_the_loops() -> None:
    from shardctl.cli import monitor
    from shardctl.ops.monitor import loop

    assert monitor.DEFAULT_INTERVAL == loop.DEFAULT_INTERVAL


def modules(*args: str, env: dict[str, str] | None = None) -> set[str]:
    """Every module a fresh interpreter has imported after ``shardctl *args``."""
    return imported_by(*args, env=env)


def test_validate_imports_no_driver_sdk_model_library_or_option_adapters() -> None:
    loaded = modules("validate", "-f", str(EXAMPLE), "-o", "json")
    # a valid file is checked by the plain models (shardctl.config.plain): pydantic only
    # explains an invalid one
    heavy = {"psycopg", "docker", "cryptography", "pydantic", "pydantic_core"}
    assert {m.split(".")[0] for m in loaded} & heavy == set()
    # typer's pydantic TypeAdapters for option values (shardctl.cli.coerce), rich's progress
    # and tenacity's retrying: no part of reading a file
    assert loaded & {"typer._adapters", "rich.progress", "tenacity"} == set()


def test_status_imports_nothing_that_changes_a_cluster() -> None:
    # no engine answers: status stops at the container listing, after its imports
    loaded = modules("status", "-f", str(EXAMPLE), env={"DOCKER_HOST": "unix:///nonexistent"})
    assert "shardctl.health.facts" in loaded  # it did get as far as its data path
    changing = {
        "cryptography",
        "shardctl.ops.up",
        "shardctl.ops.rolechange",
        "shardctl.ops.rolling",
        "shardctl.ops.changes",
        "shardctl.health.verify",
        # what only makes containers or moves data: the specs, the node work, the fence
        "shardctl.docker.specs",
        "shardctl.docker.backup_specs",
        "shardctl.ops.nodes",
        "shardctl.state.fence",
        "shardctl.config.tls",  # certificates: only for a topology with `tls:`
        "typer._adapters",
        "rich.progress",
        "pydantic",
    }
    assert loaded & changing == set()


def test_an_invalid_topology_is_explained_by_pydantic(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("cluster: demo\nshards:\n  - name: a\n    replicas: many\n")
    loaded = modules("validate", "-f", str(bad))
    assert "shardctl.config.shape" in loaded and "pydantic" in loaded


def test_each_command_is_registered_by_the_module_named_for_it() -> None:
    from shardctl.cli import COMMANDS, MODULES, app
    from shardctl.cli.app import _name

    registered = {_name(info): info.callback.__module__ for info in app.registered_commands}
    assert {name: f"shardctl.cli.{module}" for name, module in COMMANDS.items()} == {
        name: module for name, module in registered.items() if name != "help"
    }
    order = [COMMANDS.get(_name(info)) for info in app.registered_commands]
    assert order == [None, *sorted(order[1:], key=lambda m: MODULES.index(m or ""))]


def test_one_command_imports_only_its_own_command_module() -> None:
    loaded = modules("validate", "-f", str(EXAMPLE))
    commands = {m for m in loaded if m.count(".") == 2 and m.startswith("shardctl.cli.")}
    # cluster's commands call rolling's (up --plan); app, coerce, complete: the tree itself
    assert commands - {"shardctl.cli.views", "shardctl.cli.render", "shardctl.cli.plain"} == {
        "shardctl.cli.app",
        "shardctl.cli.coerce",
        "shardctl.cli.complete",
        "shardctl.cli.cluster",
        "shardctl.cli.rolling",
        "shardctl.cli.statusrun",  # every run asks it first whether it is a plain status
    }
    assert "shardctl.cli.reshard" in modules("--help")
    assert {m for m in modules("--version") if m.startswith("shardctl.cli.")} == {
        "shardctl.cli.app",
        "shardctl.cli.coerce",
        "shardctl.cli.complete",
        "shardctl.cli.statusrun",
    }


def test_a_plain_status_runs_without_typer_and_any_other_form_with_it() -> None:
    down = {"DOCKER_HOST": "unix:///nonexistent"}  # status stops at the container listing
    plain = modules("-v", "status", "-f", str(EXAMPLE), "-o", "wide", env=down)
    assert "shardctl.health.facts" in plain  # it did get as far as its data path
    assert {m.split(".")[0] for m in plain} & {"typer", "click"} == set()
    assert {m for m in plain if m.startswith("shardctl.cli.")} <= {
        "shardctl.cli.statusrun",
        "shardctl.cli.plain",
        "shardctl.cli.render",
        "shardctl.cli.views",
        "shardctl.cli.views.cluster",
        "shardctl.cli.views.monitor",
    }
    # --watch, and a value typer refuses with its usage error: the typer app
    assert "typer" in modules("status", "-f", str(EXAMPLE), "--watch", "1", "--bogus", env=down)
    assert "typer" in modules("status", "-f", str(EXAMPLE), "-o", "yaml", env=down)
