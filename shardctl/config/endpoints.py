"""Docker endpoints as a topology writes them (``engines.<name>.endpoint``, or in place of an
engine name): whether the SDK can use one, and one spelling per engine."""

from __future__ import annotations

from functools import cache
from urllib.parse import urlsplit

from shardctl.config.messages import short

ENDPOINT_SCHEMES = ("unix", "tcp", "http", "https", "ssh")
"""What the Docker SDK connects to (npipe:// is Windows only)."""
_DEFAULT_PORTS = {"tcp": 2375, "http": 2375, "https": 2376, "ssh": 22}


@cache
def endpoint_problem(endpoint: str) -> str | None:
    """Why ``endpoint`` is not a Docker endpoint the SDK can use; None when it is one."""
    shown = short(endpoint)
    if not endpoint.strip() or endpoint != endpoint.strip() or len(endpoint) > 1000:
        return f"{shown} is not a Docker endpoint (expected e.g. ssh://host or tcp://host:2376)"
    try:
        parts = urlsplit(endpoint)
        port = parts.port
    except ValueError:
        return f"{shown} is not a Docker endpoint: its port is not a number from 1 to 65535"
    if parts.scheme not in ENDPOINT_SCHEMES:
        return (
            f"{shown} is not a Docker endpoint: expected one of "
            f"{', '.join(s + '://' for s in ENDPOINT_SCHEMES)}"
        )
    if parts.scheme == "unix":
        if parts.netloc or not parts.path.startswith("/"):
            return f"{shown}: a unix endpoint names an absolute socket path (unix:///path)"
        return None
    if not parts.hostname or any(c.isspace() for c in endpoint):
        return f"{shown} names no host (expected {parts.scheme}://host[:port])"
    if port == 0:
        return f"{shown}: the port must be from 1 to 65535"
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return f"{shown}: a Docker endpoint has no path, query or fragment"
    if parts.scheme != "ssh" and parts.username is not None:
        return f"{shown}: only ssh:// endpoints name a user"
    return None


@cache
def engine_key(endpoint: str | None) -> str | None:
    """One spelling per engine: scheme and host name lower-case, the default port made
    explicit, so two spellings of one engine share its ports."""
    if endpoint is None:
        return None
    parts = urlsplit(endpoint)
    scheme = parts.scheme.lower()
    if scheme == "unix":
        return f"unix://{parts.path}"
    port = parts.port or _DEFAULT_PORTS.get(scheme)
    host = (parts.hostname or "").lower()
    if scheme in ("http", "tcp"):
        scheme = "tcp"
    return f"{scheme}://{host}:{port}"
