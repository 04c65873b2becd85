"""The docker CLI's current context: read from its files when DOCKER_HOST is unset."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import docker.errors
import pytest

from shardctl.docker import contexts
from shardctl.docker.clients import describe, make_client


def write_context(folder: Path, name: str, host: str, *, current: bool = True) -> None:
    """A docker CLI configuration folder as `docker context create` + `use` leave it."""
    folder.mkdir(parents=True, exist_ok=True)
    if current:
        (folder / "config.json").write_text(json.dumps({"currentContext": name}))
    meta = folder / "contexts" / "meta" / hashlib.sha256(name.encode()).hexdigest()
    meta.mkdir(parents=True)
    endpoints = {"docker": {"Host": host, "SkipTLSVerify": False}}
    (meta / "meta.json").write_text(json.dumps({"Name": name, "Endpoints": endpoints}))


@pytest.fixture
def docker_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "docker-config"
    monkeypatch.setenv("DOCKER_CONFIG", str(folder))
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    monkeypatch.delenv("DOCKER_CONTEXT", raising=False)
    return folder


def test_the_current_context_names_its_engine(docker_config: Path) -> None:
    write_context(docker_config, "colima", "unix:///home/u/.colima/default/docker.sock")
    found = contexts.current()
    assert found is not None
    assert (found.name, found.host) == ("colima", "unix:///home/u/.colima/default/docker.sock")
    assert found.tls_folder is None


def test_docker_context_in_the_environment_wins(
    docker_config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_context(docker_config, "colima", "unix:///colima.sock")
    write_context(docker_config, "remote", "tcp://127.0.0.1:2376", current=False)
    monkeypatch.setenv("DOCKER_CONTEXT", "remote")
    found = contexts.current()
    assert found is not None and found.host == "tcp://127.0.0.1:2376"


def test_no_context_default_or_unreadable_files_mean_the_sdk_default(docker_config: Path) -> None:
    assert contexts.current() is None  # no config.json at all
    docker_config.mkdir()
    (docker_config / "config.json").write_text(json.dumps({"currentContext": "default"}))
    assert contexts.current() is None
    (docker_config / "config.json").write_text("{not json")
    assert contexts.current() is None
    (docker_config / "config.json").write_text(json.dumps({"currentContext": "gone"}))
    assert contexts.current() is None  # named, but its meta.json is missing


def test_the_client_goes_to_the_context_unless_docker_host_is_set(
    docker_config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_context(docker_config, "remote", "tcp://127.0.0.1:9")  # discard: nothing listens
    with pytest.raises(docker.errors.DockerException, match="port=9\\)"):
        make_client(None)  # the SDK asks the engine its API version at once
    assert "docker context remote" in describe(None)
    monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:7")
    with pytest.raises(docker.errors.DockerException, match="port=7\\)"):
        make_client(None)
