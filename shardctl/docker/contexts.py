"""The docker CLI's current context, which the Docker SDK ignores.

``docker context use`` (colima, rootless Docker, remote engines) records the context's name in
``~/.docker/config.json`` (``currentContext``; ``$DOCKER_CONFIG`` moves the folder,
``$DOCKER_CONTEXT`` overrides the name) and its endpoint in
``contexts/meta/<sha256 of the name>/meta.json``; TLS files, when the context has them, in
``contexts/tls/<sha256>/docker/``. shardctl uses that endpoint when ``DOCKER_HOST`` is unset,
as the docker CLI does.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Context:
    """A docker CLI context: its name, its engine's URL, TLS files if it has them."""

    name: str
    host: str
    tls_folder: Path | None = None
    skip_tls_verify: bool = False


def config_folder() -> Path:
    """Where the docker CLI keeps its configuration."""
    return Path(os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker")


def current(folder: Path | None = None) -> Context | None:
    """The context the docker CLI would use now, or None for its default (``DOCKER_HOST``, else
    the local socket): no context chosen, ``default``, or files that cannot be read."""
    folder = folder or config_folder()
    name = os.environ.get("DOCKER_CONTEXT") or _read_json(folder / "config.json").get(
        "currentContext"
    )
    if not isinstance(name, str) or name in ("", "default"):
        return None
    digest = hashlib.sha256(name.encode()).hexdigest()
    meta = _read_json(folder / "contexts" / "meta" / digest / "meta.json")
    endpoints = meta.get("Endpoints")
    endpoint = endpoints.get("docker") if isinstance(endpoints, dict) else None
    host = endpoint.get("Host") if isinstance(endpoint, dict) else None
    if not isinstance(endpoint, dict) or not isinstance(host, str) or not host:
        return None
    tls = folder / "contexts" / "tls" / digest / "docker"
    return Context(
        name=name,
        host=host,
        tls_folder=tls if tls.is_dir() else None,
        skip_tls_verify=bool(endpoint.get("SkipTLSVerify", False)),
    )


def _read_json(path: Path) -> dict[str, object]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
