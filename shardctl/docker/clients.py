"""Docker clients: which engine (endpoint), how to reach it (TLS, ssh), and its errors as ours.

The Docker SDK (and requests under it) is imported on first use, not with shardctl: an
application that only routes queries, and every command that never touches Docker, start a
third of a second sooner.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from shardctl.config.topology import EngineTLS, Placement
from shardctl.docker import contexts
from shardctl.errors import DockerUnavailable, ProvisioningError

if TYPE_CHECKING:
    import docker
    import docker.tls

Endpoint = Placement | str | None
"""An engine as :class:`~shardctl.docker.engine.Engines` takes it: a node's placement, a bare
DOCKER_HOST-style URL, or None for $DOCKER_HOST (or the default socket)."""


@contextlib.contextmanager
def docker_errors(doing: str) -> Iterator[None]:
    """Turn Docker SDK failures into shardctl errors that say what was being done."""
    import docker.errors
    import requests.exceptions

    try:
        yield
    except (requests.exceptions.ConnectionError, docker.errors.DockerException) as exc:
        if isinstance(exc, docker.errors.APIError):
            reason = exc.explanation or str(exc)
            raise ProvisioningError(f"{doing}: Docker refused: {reason}") from None
        error = DockerUnavailable(
            f"{doing}: the Docker engine does not answer; start it, or set DOCKER_HOST "
            "or `docker context use`"
        )
        error.detail = short(exc)
        raise error from None


def short(exc: Exception) -> str:
    """The first line of an SDK error, at most 160 characters."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:160]


def _url(engine: Endpoint) -> str | None:
    return engine.endpoint if isinstance(engine, Placement) else engine


def describe(engine: Endpoint) -> str:
    """An engine as error messages name it: its name and where it is."""
    context = (
        contexts.current() if _url(engine) is None and "DOCKER_HOST" not in os.environ else None
    )
    default = f"{context.host} (docker context {context.name})" if context else "the default socket"
    url = _url(engine) or os.environ.get("DOCKER_HOST") or default
    if isinstance(engine, Placement):
        return f"engine {engine.name} ({url}, host {engine.advertise})"
    return url


def tls_config(tls: EngineTLS) -> docker.tls.TLSConfig:
    """The Docker SDK's TLS settings for an engine; missing files come from $DOCKER_CERT_PATH
    (``ca.pem``, ``cert.pem``, ``key.pem``), as the docker CLI does."""
    import docker.tls

    folder = os.environ.get("DOCKER_CERT_PATH")

    def pick(given: Path | None, default: str) -> str | None:
        if given is not None:
            return str(given)
        return os.path.join(folder, default) if folder else None

    ca, cert, key = pick(tls.ca, "ca.pem"), pick(tls.cert, "cert.pem"), pick(tls.key, "key.pem")
    for what, path in (("ca", ca), ("cert", cert), ("key", key)):
        if path is not None and not os.path.isfile(path):
            raise ProvisioningError(f"TLS {what} file {path} does not exist")
    return docker.tls.TLSConfig(
        client_cert=(cert, key) if cert and key else None,
        ca_cert=ca if tls.verify else None,
        verify=(ca or True) if tls.verify else False,
    )


PING_TIMEOUT = 5
"""Seconds an engine has to answer its first ping: past it, its host counts as lost."""
API_TIMEOUT = 60
"""Seconds any later Docker call may take (a stop waits for its own timeout within it)."""


def make_client(engine: Endpoint, *, timeout: int = API_TIMEOUT) -> docker.DockerClient:
    """A Docker client for ``engine``, not yet connected: TLS for tcp:// when the engine asks
    for it, the system ssh (its ~/.ssh/config) or paramiko for ssh://."""
    import docker

    url = _url(engine)
    context = contexts.current() if url is None and "DOCKER_HOST" not in os.environ else None
    if context is not None:  # the SDK reads DOCKER_HOST only; the docker CLI, its context too
        return docker.DockerClient(
            base_url=context.host, tls=_context_tls(context), timeout=timeout
        )
    if url is None:
        return docker.from_env(timeout=timeout)
    if isinstance(engine, Placement):
        tls = tls_config(engine.tls) if engine.tls is not None else False
        return docker.DockerClient(
            base_url=url,
            tls=tls,
            timeout=timeout,
            use_ssh_client=engine.ssh_client and url.startswith("ssh://"),
        )
    return docker.DockerClient(
        base_url=url, timeout=timeout, use_ssh_client=url.startswith("ssh://")
    )


def _context_tls(context: contexts.Context) -> docker.tls.TLSConfig | bool:
    """The TLS files a docker context keeps for its engine (none: plain, as the CLI does)."""
    import docker.tls

    if context.tls_folder is None:
        return False
    folder = context.tls_folder
    ca, cert, key = (folder / name for name in ("ca.pem", "cert.pem", "key.pem"))
    return docker.tls.TLSConfig(
        client_cert=(str(cert), str(key)) if cert.is_file() and key.is_file() else None,
        ca_cert=str(ca) if ca.is_file() and not context.skip_tls_verify else None,
        verify=False if context.skip_tls_verify else (str(ca) if ca.is_file() else True),
    )


DEFAULT_SOCKET = "/var/run/docker.sock"
"""Where the Docker SDK looks when neither DOCKER_HOST nor a docker context says otherwise."""


def local_socket(engine: Endpoint) -> str | None:
    """The path of the unix socket ``engine`` is reached through, as :func:`make_client`
    would pick it; None for any other transport (tcp://, ssh://, a context's TLS)."""
    url = _url(engine)
    if url is None:
        url = os.environ.get("DOCKER_HOST")
    if url is None:
        context = contexts.current()
        url = "unix://" + DEFAULT_SOCKET if context is None else context.host
    if not url.startswith("unix://") or len(url) <= len("unix://"):
        return None
    return url[len("unix://") :]


def list_over_socket(path: str, query: str, timeout: float = PING_TIMEOUT) -> object | None:
    """``GET /containers/json?<query>`` straight over the engine's unix socket (HTTP/1.0, the
    JSON body), without the Docker SDK and the HTTP stack it imports; None when anything is
    unlike a plain answer (the caller then asks through the SDK, whose errors it reports)."""
    import json
    import socket

    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(path)
            request = f"GET /containers/json?{query} HTTP/1.0\r\nHost: docker\r\n\r\n"
            sock.sendall(request.encode("ascii"))
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
        status = head.split(b"\r\n", 1)[0].split()
        if len(status) < 2 or status[1] != b"200" or b"chunked" in head.lower():
            return None
        rows: object = json.loads(body)
    except (OSError, ValueError, UnicodeError):
        return None
    return rows
