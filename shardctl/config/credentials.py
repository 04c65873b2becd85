"""Find the cluster's passwords: from the environment, a file, or generated on first ``up``.

Nothing here ever prints a password. Generated passwords live in a JSON file readable only by
its owner (mode 0600), by default ``$XDG_CONFIG_HOME/shardctl/<cluster>.json``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

from shardctl.config.topology import Node, Topology
from shardctl.errors import UsageError

if TYPE_CHECKING:  # the certificates are made or read for `tls:` only (status needs none)
    from shardctl.config import tls

SECRETS_DIR_ENV = "SHARDCTL_SECRETS_DIR"
GENERATED = ("superuser", "replication", "app", "pooler")
"""The passwords generated on first ``up`` (each only when not declared elsewhere)."""
CA_CERT, CA_KEY = "tls_ca_cert", "tls_ca_key"
"""The cluster CA of ``tls: required`` in the secrets file (made on first ``up``)."""
SERVER_FILES = ("server.crt", "server.key", "ca.crt")
"""A node's TLS files in its container, with the secrets."""


@dataclass(frozen=True)
class Credentials:
    """Who connects to the nodes and with which passwords."""

    superuser: str
    superuser_password: str
    replication_user: str
    replication_password: str
    app_user: str = "app"
    app_password: str | None = None
    """None for a cluster made before the application role existed, until the next ``up``."""
    pooler_password: str | None = None
    """Of :data:`POOLER_ADMIN`, known to the poolers alone; None until the next ``up``."""
    tls_root: Path | None = None
    """With ``tls: required``: the CA certificate file clients verify servers by (libpq's
    ``sslrootcert``); None without TLS."""
    tls_ca: tls.KeyPair | None = None
    """The cluster's generated CA, which signs each node's certificate."""
    tls_server: tls.KeyPair | None = None
    """The user's own certificate and key, presented by every node."""

    def __repr__(self) -> str:
        return (
            f"Credentials(superuser={self.superuser!r}, replication_user={self.replication_user!r}"
            f", app_user={self.app_user!r})"
        )

    def login(self, login: Login) -> tuple[str, str]:
        """The user name and password to connect as ``login``."""
        if login is Login.SUPERUSER:
            return self.superuser, self.superuser_password
        if login is Login.POOLER_ADMIN:
            return POOLER_ADMIN, self.pooler_password or ""
        if self.app_password is None:
            raise UsageError(
                f"no password for the application role {self.app_user!r} yet: run `shardctl up` "
                "(it creates the role)"
            )
        return self.app_user, self.app_password

    def server_files(self, node: Node) -> dict[str, str]:
        """The TLS files of ``node``'s container (:data:`SERVER_FILES`): a certificate naming
        every address it is reached on, signed by the cluster CA, or the user's own."""
        if self.tls_ca is not None:
            from shardctl.config import tls

            names = [
                node.container,  # replicas on its engine reach it by container name
                node.name,  # its host name
                node.placement.advertise,  # clients and other hosts
                "localhost",
                "127.0.0.1",
                "::1",
            ]
            pair = tls.issue(self.tls_ca, node.container, names)
            return {"server.crt": pair.cert, "server.key": pair.key, "ca.crt": self.tls_ca.cert}
        if self.tls_server is None or self.tls_root is None:
            raise AssertionError("server_files without TLS certificates: a bug")
        root = _read_text(self.tls_root, "tls.ca_file")
        return {
            "server.crt": self.tls_server.cert,
            "server.key": self.tls_server.key,
            "ca.crt": root,
        }


POOLER_ADMIN = "shardctl_pooler"
"""The user of the poolers' admin console (SHOW POOLS, RECONNECT): a PgBouncer user only, no
role in PostgreSQL."""


class Login(StrEnum):
    """Which role a connection logs in as: shardctl's administration, or the application's."""

    SUPERUSER = "superuser"
    """``up``, catalogs, health, reshards, role changes: shardctl's own operations."""
    APP = "app"
    """The Router and ``load``: the sharded tables and the fence, nothing else."""
    POOLER_ADMIN = "pooler"
    """A PgBouncer's admin console (:data:`POOLER_ADMIN`): what the pooler says of itself."""


def secrets_path(topology: Topology) -> Path:
    """Where generated passwords for this cluster are kept."""
    declared = topology.spec.credentials.secrets_file
    if declared:
        return topology.path.parent / Path(declared).expanduser()
    base = os.environ.get(SECRETS_DIR_ENV) or os.environ.get("XDG_CONFIG_HOME")
    root = Path(base) if base else Path.home() / ".config"
    folder = root if os.environ.get(SECRETS_DIR_ENV) else root / "shardctl"
    return folder / f"{topology.cluster}.json"


def load(topology: Topology, *, create: bool = False) -> Credentials:
    """The cluster's credentials; with ``create``, generate and store any that are missing."""
    spec = topology.spec.credentials
    path = secrets_path(topology)
    # The declared passwords first: a variable that is not set must not leave a file behind.
    declared = _declared(topology, spec.password_env, spec.password_file, "password")
    declared_app = _declared(
        topology, spec.app_password_env, spec.app_password_file, "app_password"
    )
    stored = _read(path)
    generated = dict(stored)
    for key in GENERATED:
        if key not in generated and create:
            import secrets  # only a first `up` generates passwords

            generated[key] = secrets.token_urlsafe(24)
    server_tls = topology.tls
    if server_tls is not None:
        from shardctl.config import tls
    if server_tls is not None and server_tls.generated and CA_KEY not in generated and create:
        ca = tls.make_ca(topology.cluster)
        generated[CA_CERT], generated[CA_KEY] = ca.cert, ca.key
    if generated != stored:
        _write(path, generated)
    tls_root: Path | None = None
    tls_ca: tls.KeyPair | None = None
    tls_server: tls.KeyPair | None = None
    if server_tls is not None and server_tls.generated:
        if CA_KEY in generated:
            tls_ca = tls.KeyPair(generated[CA_CERT], generated[CA_KEY])
            tls_root = root_path(topology).absolute()  # libpq reads it from any cwd
            if _read_optional(tls_root) != tls_ca.cert:  # libpq reads the root from a file
                _write_text(tls_root, tls_ca.cert)
    elif server_tls is not None and server_tls.cert is not None and server_tls.key is not None:
        tls_root = server_tls.ca.absolute() if server_tls.ca is not None else None
        tls_server = tls.KeyPair(
            _read_text(server_tls.cert, "tls.cert_file"), _read_text(server_tls.key, "tls.key_file")
        )

    superuser_password = declared or generated.get("superuser")
    replication_password = generated.get("replication")
    app_password = declared_app or generated.get("app")
    if superuser_password is None or replication_password is None:
        raise UsageError(
            f"no passwords for cluster {topology.cluster!r}: run `shardctl up` first, or set "
            f"credentials.password_env in {topology.path} (looked in {path})"
        )
    return Credentials(
        superuser=spec.superuser,
        superuser_password=superuser_password,
        replication_user=spec.replication_user,
        replication_password=replication_password,
        app_user=spec.app_user,
        app_password=app_password,
        pooler_password=generated.get("pooler"),
        tls_root=tls_root,
        tls_ca=tls_ca,
        tls_server=tls_server,
    )


def root_path(topology: Topology) -> Path:
    """Where the cluster CA's certificate is written for libpq, beside the secrets file."""
    return secrets_path(topology).with_suffix(".ca.crt")


def forget(topology: Topology) -> None:
    """Remove generated passwords (after the data they protect is gone)."""
    secrets_path(topology).unlink(missing_ok=True)
    root_path(topology).unlink(missing_ok=True)


def _declared(topology: Topology, env: str | None, file: str | None, key: str) -> str | None:
    """A password from the variable ``env`` or the ``file`` the topology names, if any
    (``key``: ``credentials.<key>_env`` / ``_file`` in messages)."""
    if env:
        value = os.environ.get(env)
        if not value:
            raise UsageError(
                f"{topology.path}: credentials.{key}_env names ${env}, which is not set"
            )
        return value
    if file:
        path = topology.path.parent / Path(file).expanduser()
        try:
            return path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise UsageError(
                f"{topology.path}: cannot read credentials.{key}_file {path}: {exc.strerror}"
            ) from None
    return None


def _read(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read the secrets file {path}: {exc}") from None
    if not isinstance(data, dict):
        raise UsageError(f"the secrets file {path} is not a JSON object")
    return {str(k): str(v) for k, v in data.items()}


def _read_text(path: Path, key: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise UsageError(f"cannot read {key} {path}: {reason}") from None


def _read_optional(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, ValueError):
        return None


def _write(path: Path, data: dict[str, str]) -> None:
    _write_text(path, json.dumps(data))


def _write_text(path: Path, text: str) -> None:
    """Write ``path`` whole (a rename), readable by its owner only."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(tmp, path)
    except OSError as exc:
        raise UsageError(
            f"cannot write the secrets file {path}: {exc.strerror or type(exc).__name__}"
        ) from None
