"""A node as people and other programs reach it: a libpq URI, and a pgpass line that carries
the password instead of a command line."""

from __future__ import annotations

from urllib.parse import quote, urlencode

from shardctl.config.addresses import address
from shardctl.config.credentials import Credentials, Login
from shardctl.config.topology import Node


def uri(
    node: Node,
    credentials: Credentials,
    dbname: str,
    *,
    login: Login = Login.APP,
    with_password: bool = False,
) -> str:
    """``postgresql://user[:password]@host:port/db[?sslmode=...]`` for ``node`` as ``login``;
    the password only when asked for."""
    host, port = address(node)
    user, password = credentials.login(login)
    who = quote(user, safe="") + (":" + quote(password, safe="") if with_password else "")
    params: dict[str, str] = {}
    if node.sslmode is not None:
        params["sslmode"] = node.sslmode
    if credentials.tls_root is not None:
        params["sslrootcert"] = str(credentials.tls_root)
    query = f"?{urlencode(params)}" if params else ""
    shown = f"[{host}]" if ":" in host else host
    return f"postgresql://{who}@{shown}:{port}/{quote(dbname, safe='')}{query}"


def pgpass_line(host: str, port: int, dbname: str, user: str, password: str) -> str:
    """One line of a libpq password file, with ``:`` and ``\\`` escaped as libpq reads them."""
    fields = (host, str(port), dbname, user, password)
    return ":".join(f.replace("\\", "\\\\").replace(":", "\\:") for f in fields) + "\n"
