"""The one place that calls the Docker SDK: :class:`Engines`, the clients of a topology's engines
and the small operations shardctl does with them.

Other modules describe a container as a :class:`~shardctl.docker.records.ContainerSpec` and get
back :class:`~shardctl.docker.records.Container` records; only this module (and
:mod:`shardctl.docker.clients`, which makes the clients) imports ``docker``.
"""

from __future__ import annotations

import contextlib
import io
import json
import posixpath
import threading
from collections.abc import Mapping
from functools import partial
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from shardctl.config.topology import Node, Topology
from shardctl.docker.clients import (
    API_TIMEOUT,
    PING_TIMEOUT,
    Endpoint,
    describe,
    docker_errors,
    list_over_socket,
    local_socket,
    make_client,
    short,
)
from shardctl.docker.records import (
    LABEL_CLUSTER,
    LABEL_CONFIG,
    LABEL_PROBE,
    LABEL_SHARD,
    LABEL_SPEC,
    Container,
    ContainerSpec,
    config_digest,
    create_arguments,
    node_labels,
    spec_record,
)
from shardctl.errors import DockerUnavailable, ProvisioningError
from shardctl.util import fanout

if TYPE_CHECKING:
    import docker
    import docker.models.containers


def _files_archive(folder: str, files: Mapping[str, str], owner: tuple[int, int]) -> bytes:
    """A tar of ``folder`` holding ``files`` (name → text), to unpack at the folder's parent:
    the folder mode 0700 and the files 0600, all owned by ``owner`` (uid, gid)."""
    import tarfile  # only writing and reading files: a read such as `status` needs none

    buffer = io.BytesIO()
    base = posixpath.basename(folder.rstrip("/"))
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo(base)
        info.type, info.mode = tarfile.DIRTYPE, 0o700
        info.uid, info.gid = owner
        tar.addfile(info)
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"{base}/{name}")
            info.size, info.mode = len(data), 0o600
            info.uid, info.gid = owner
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def user_ids(passwd: str, user: str) -> tuple[int, int] | None:
    """The uid and gid of ``user`` (a name, ``uid`` or ``uid:gid``) in a passwd file's text."""
    uid, _, gid = user.partition(":")
    if uid.isdigit():
        return int(uid), int(gid) if gid.isdigit() else int(uid)
    for line in passwd.splitlines():
        fields = line.split(":")
        if len(fields) >= 4 and fields[0] == uid and fields[2].isdigit() and fields[3].isdigit():
            return int(fields[2]), int(fields[3])
    return None


def _read_file(container: docker.models.containers.Container, path: str) -> str:
    """The text of one file in a (created or running) container."""
    import tarfile

    stream, _ = container.get_archive(path)
    with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
        member = tar.next()
        extracted = tar.extractfile(member) if member is not None else None
        return extracted.read().decode("utf-8", "replace") if extracted is not None else ""


def _record(found: docker.models.containers.Container, endpoint: Endpoint) -> Container:
    """Our record of an SDK container (its attributes as last inspected)."""
    attrs: dict[str, Any] = found.attrs
    config = attrs.get("Config") or {}
    state = attrs.get("State")
    pairs = config.get("Env") or []
    return Container(
        id=str(found.id),
        name=str(found.name),
        state=str(state.get("Status") or "unknown") if isinstance(state, dict) else str(state),
        exit_code=int(state.get("ExitCode") or 0) if isinstance(state, dict) else 0,
        labels=dict(config.get("Labels") or {}),
        environment=dict(str(pair).partition("=")[::2] for pair in pairs),
        endpoint=endpoint,
        image=str(config.get("Image") or ""),
    )


class Engines:
    """Docker clients for the engines a topology uses, opened on first use."""

    def __init__(self) -> None:
        self._clients: dict[Endpoint, docker.DockerClient] = {}
        self._lost: dict[Endpoint, DockerUnavailable] = {}
        self._lock = threading.Lock()

    def client(self, endpoint: Endpoint = None) -> docker.DockerClient:
        """A client for ``endpoint`` (None: DOCKER_HOST or the default socket), pinged once
        within :data:`PING_TIMEOUT` seconds: a lost or frozen engine (host) is judged at once,
        and remembered, so later calls fail at once too instead of waiting on it again."""
        with self._lock:
            lost = self._lost.get(endpoint)
            if lost is not None:
                raise lost
            if endpoint not in self._clients:
                try:
                    with docker_errors(f"connecting to Docker at {describe(endpoint)}"):
                        client = make_client(endpoint, timeout=PING_TIMEOUT)
                        client.ping()
                        client.api.timeout = API_TIMEOUT  # pulls, stops: minutes are fine
                except DockerUnavailable as exc:
                    self._lost[endpoint] = exc
                    raise
                self._clients[endpoint] = client
            return self._clients[endpoint]

    def forget_lost(self) -> None:
        """Ask the engines judged lost again at their next use (a long-running process, the
        monitor, sees a lost host come back)."""
        with self._lock:
            self._lost.clear()

    def endpoints(self, topology: Topology) -> list[Endpoint]:
        """Every distinct engine the topology's nodes run on."""
        return list(topology.placements())

    def container(self, node: Node, *, pooler: bool = False) -> Container | None:
        """The node's container (``pooler``: its PgBouncer's), if it exists."""
        import docker.errors

        name = node.pooler_container if pooler else node.container
        with docker_errors(f"looking up container {name}"):
            try:
                found = self.client(node.placement).containers.get(name)
            except docker.errors.NotFound:
                return None
        record = _record(found, node.placement)
        if record.labels.get(LABEL_CLUSTER) != node.cluster:
            raise ProvisioningError(
                f"a container named {name} exists but does not belong to cluster "
                f"{node.cluster!r}; remove or rename it"
            )
        return record

    def cluster_containers(self, topology: Topology) -> list[Container]:
        """Every container labelled with the cluster, on every engine, declared or not."""
        found: list[Container] = []
        for endpoint in self.endpoints(topology):
            with docker_errors("listing containers"):
                found += [
                    _record(c, endpoint)
                    for c in self.client(endpoint).containers.list(
                        all=True, filters=_labelled(topology.cluster)
                    )
                ]
        return found

    def container_states_per_engine(
        self, topology: Topology
    ) -> tuple[dict[str, str], dict[Endpoint, DockerUnavailable]]:
        """Name → state of every container labelled with the cluster, one list call per engine
        and every engine at once (it inspects no container, so probes stay cheap); an engine
        that does not answer (a lost host) is returned with its error instead of failing the
        rest."""

        query = urlencode(
            {"all": "1", "filters": json.dumps({"label": [f"{LABEL_CLUSTER}={topology.cluster}"]})}
        )

        def listing(endpoint: Endpoint) -> list[dict[str, Any]]:
            # A local engine is asked over its socket directly: status (which lists and
            # nothing more) then never imports the Docker SDK and requests.
            path = local_socket(endpoint)
            if path is not None and endpoint not in self._clients:
                answer = list_over_socket(path, query)
                if isinstance(answer, list) and all(isinstance(row, dict) for row in answer):
                    return answer
            with docker_errors(f"listing containers on {describe(endpoint)}"):
                rows: list[dict[str, Any]] = self.client(endpoint).api.containers(
                    all=True, filters=_labelled(topology.cluster)
                )
            return rows

        listed = fanout.gather({e: partial(listing, e) for e in self.endpoints(topology)})
        found: dict[str, str] = {}
        lost: dict[Endpoint, DockerUnavailable] = {}
        for endpoint, rows in listed.items():
            if isinstance(rows, DockerUnavailable):
                lost[endpoint] = rows
                continue
            if isinstance(rows, BaseException):
                raise rows
            for row in rows:
                names = row.get("Names") or []
                if names:
                    found[str(names[0]).lstrip("/")] = str(row.get("State") or "unknown")
        return found, lost

    # ------------------------------------------------------------- images

    def image_volumes(self, image: str, endpoint: Endpoint = None) -> list[str] | None:
        """The volumes an image declares, sorted; None when the engine does not have it."""
        import docker.errors

        with docker_errors(f"inspecting image {image}"):
            try:
                found = self.client(endpoint).images.get(image)
            except docker.errors.ImageNotFound:
                return None
        return _declared_volumes(found.attrs)

    def pull(self, image: str, endpoint: Endpoint = None) -> list[str]:
        """Pull an image; the volumes it declares, sorted."""
        import docker.errors

        client = self.client(endpoint)
        try:
            found = client.images.pull(image)
        except docker.errors.DockerException as exc:
            raise ProvisioningError(
                f"image {image} is not present and could not be pulled ({short(exc)}); "
                "without a registry, load it on that engine (`docker load`) or build one "
                "there, and name it in the topology's `image:`"
            ) from None
        return _declared_volumes(found.attrs)

    # -------------------------------------------------- networks and volumes

    def ensure_network(self, name: str, labels: Mapping[str, str], endpoint: Endpoint) -> None:
        """Create a bridge network unless one of that name exists."""
        client = self.client(endpoint)
        with docker_errors(f"creating network {name}"):
            if not any(n.name == name for n in client.networks.list(names=[name])):
                client.networks.create(name, driver="bridge", labels=dict(labels))

    def ensure_volume(self, node: Node) -> bool:
        """Make the node's volume; True when it was created now (the node starts empty)."""
        import docker.errors

        client = self.client(node.placement)
        with docker_errors(f"creating volume {node.volume}"):
            try:
                volume = client.volumes.get(node.volume)
            except docker.errors.NotFound:
                client.volumes.create(node.volume, labels=node_labels(node))
                return True
        if (volume.attrs.get("Labels") or {}).get(LABEL_CLUSTER) != node.cluster:
            raise ProvisioningError(
                f"a volume named {node.volume} exists but does not belong to cluster "
                f"{node.cluster!r}; remove or rename it"
            )
        return False

    def has_volume(self, node: Node) -> bool:
        """Whether the node's data volume exists (it may hold the shard's data)."""
        import docker.errors

        with docker_errors(f"inspecting volume {node.volume}"):
            try:
                self.client(node.placement).volumes.get(node.volume)
            except docker.errors.NotFound:
                return False
        return True

    def remove_node(self, node: Node) -> None:
        """Remove a node's container and its data volume (a fenced node about to be re-cloned)."""
        import docker.errors

        container = self.container(node)
        if container is not None:
            self.remove_container(container, stop_timeout=10)
        with (
            docker_errors(f"removing volume {node.volume}"),
            contextlib.suppress(docker.errors.NotFound),
        ):
            self.client(node.placement).volumes.get(node.volume).remove(force=True)

    def remove_networks(self, topology: Topology) -> list[str]:
        """Remove the cluster's networks on every engine; their names."""
        removed: list[str] = []
        for endpoint in self.endpoints(topology):
            with docker_errors("removing networks"):
                for network in self.client(endpoint).networks.list(
                    filters=_labelled(topology.cluster)
                ):
                    network.remove()
                    removed.append(str(network.name))
        return removed

    def shard_containers(self, topology: Topology, shard: str) -> list[Container]:
        """Every container of one shard of the cluster (by label), declared or not."""
        return [c for c in self.cluster_containers(topology) if c.labels.get(LABEL_SHARD) == shard]

    def shard_volumes(self, topology: Topology, shard: str) -> list[str]:
        """The names of one shard's data volumes (by label), on every engine."""
        found: list[str] = []
        for endpoint in self.endpoints(topology):
            with docker_errors("listing volumes"):
                found += [
                    str(v.name)
                    for v in self.client(endpoint).volumes.list(
                        filters={"label": [f"{LABEL_CLUSTER}={topology.cluster}",
                                           f"{LABEL_SHARD}={shard}"]}
                    )
                ]  # fmt: skip
        return sorted(found)

    def remove_shard_volumes(self, topology: Topology, shard: str) -> list[str]:
        """Remove one shard's data volumes (its data) on every engine; their names."""
        removed: list[str] = []
        for endpoint in self.endpoints(topology):
            with docker_errors(f"removing the volumes of {shard}"):
                for volume in self.client(endpoint).volumes.list(
                    filters={"label": [f"{LABEL_CLUSTER}={topology.cluster}",
                                       f"{LABEL_SHARD}={shard}"]}
                ):  # fmt: skip
                    volume.remove(force=True)
                    removed.append(str(volume.name))
        return sorted(removed)

    def remove_volumes(self, topology: Topology) -> list[str]:
        """Remove the cluster's volumes (its data) on every engine; their names."""
        removed: list[str] = []
        for endpoint in self.endpoints(topology):
            with docker_errors("removing volumes"):
                for volume in self.client(endpoint).volumes.list(
                    filters=_labelled(topology.cluster)
                ):
                    volume.remove(force=True)
                    removed.append(str(volume.name))
        return removed

    # ---------------------------------------------------------- containers

    def create_container(
        self, spec: ContainerSpec, secrets: Mapping[str, str], endpoint: Endpoint
    ) -> Container:
        """Create (not start) a container, labelled with its config digest, secrets in place.

        The secret files are copied in before the first start, so they are never on a command
        line or in the container's environment; mode 0600, owned by the container's user.
        Secrets other than the spec's are a bug (AssertionError).
        """
        if set(secrets) != set(spec.secrets):
            raise AssertionError(f"{spec.name} needs secrets {spec.secrets}, not {sorted(secrets)}")
        arguments = create_arguments(spec)
        labels = dict(spec.labels) | {
            LABEL_CONFIG: config_digest(spec),
            LABEL_SPEC: spec_record(spec),
        }
        with docker_errors(f"creating container {spec.name}"):
            container = self.client(endpoint).containers.create(
                labels=labels,
                **arguments,  # type: ignore[arg-type]
            )
            try:
                # Owned by the server's user, readable by it alone: the image decides its uid.
                owner = user_ids(_read_file(container, "/etc/passwd"), spec.user)
                if owner is None:
                    raise ProvisioningError(
                        f"{spec.name}: the image {spec.image} has no user {spec.user!r}"
                    )
                container.put_archive(
                    posixpath.dirname(spec.secrets_dir.rstrip("/")) or "/",
                    _files_archive(spec.secrets_dir, secrets, owner),
                )
            except BaseException:
                # Not without its secrets (a Ctrl-C or an error in between): `up` again would
                # find it, start it, and wait for a server that never comes up.
                container.remove(force=True)
                raise
        return _record(container, endpoint)

    def _state(self, container: Container) -> str:
        state = self.client(container.endpoint).api.inspect_container(container.id).get("State")
        return str(state.get("Status") or "unknown") if isinstance(state, dict) else str(state)

    def status(self, container: Container) -> str:
        """The container's state as the engine sees it now (running, paused, exited…)."""
        with docker_errors(f"inspecting {container.name}"):
            return self._state(container)

    def start(self, container: Container) -> None:
        """Start a stopped container, or unpause a paused one."""
        api = self.client(container.endpoint).api
        with docker_errors(f"starting {container.name}"):
            if self._state(container) == "paused":
                api.unpause(container.id)
            else:
                api.start(container.id)

    def stop(self, container: Container, *, timeout: int) -> None:
        """Stop a container cleanly (SIGINT: PostgreSQL's fast shutdown), SIGKILL at ``timeout``."""
        api = self.client(container.endpoint).api
        with docker_errors(f"stopping {container.name}"):
            state = self._state(container)
            if state in ("running", "paused", "restarting"):
                if state == "paused":
                    api.unpause(container.id)
                api.stop(container.id, timeout=timeout)

    def kill(self, container: Container) -> None:
        """SIGKILL a running or paused container. The engine thaws a paused one so the signal
        lands: its processes may run for an instant before they die."""
        api = self.client(container.endpoint).api
        with docker_errors(f"killing {container.name}"):
            if self._state(container) in ("running", "paused", "restarting"):
                api.kill(container.id)

    def put_file(
        self, container: Container, folder: str, name: str, text: str, *, mode: int = 0o600
    ) -> None:
        """Write one file into a container, running or stopped (volumes included), mode 0600
        unless said."""
        import tarfile

        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
        with docker_errors(f"writing {name} into {container.name}"):
            self.client(container.endpoint).api.put_archive(container.id, folder, buffer.getvalue())

    def read_text(self, container: Container, path: str) -> str | None:
        """The text of one file in a container (running or stopped); None when it is missing."""
        import docker.errors

        with docker_errors(f"reading {path} in {container.name}"):
            try:
                found = self.client(container.endpoint).containers.get(container.id)
                return _read_file(found, path)
            except docker.errors.NotFound:
                return None

    def restart(self, container: Container, *, timeout: int) -> None:
        """Stop a container cleanly (SIGKILL at ``timeout``) and start it again."""
        with docker_errors(f"restarting {container.name}"):
            self.client(container.endpoint).api.restart(container.id, timeout=timeout)

    def run_once(self, image: str, script: str, args: list[str], endpoint: Endpoint = None) -> str:
        """Run ``sh -c script`` with ``args`` as the image's ``postgres`` user in a throw-away
        container without network; its output (stdout and stderr). It must exit 0."""
        client = self.client(endpoint)
        with docker_errors(f"running a throw-away container of {image}"):
            container = client.containers.create(
                image,
                entrypoint=["sh", "-c", script, "shardctl-probe"],
                command=args,
                user="postgres",
                network_mode="none",
                labels={LABEL_PROBE: "1"},
            )
            try:
                container.start()
                result = container.wait(timeout=120)
                raw: Any = container.logs(stdout=True, stderr=True)
            finally:
                container.remove(force=True)
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        if result.get("StatusCode") != 0:
            raise ProvisioningError(f"{image}: the throw-away container failed:\n{text[-500:]}")
        return text

    def named(self, name: str, endpoint: Endpoint) -> Container | None:
        """The container called ``name`` on ``endpoint``, if it exists (the backup node, a
        restore: containers of no node)."""
        import docker.errors

        with docker_errors(f"looking up container {name}"):
            try:
                found = self.client(endpoint).containers.get(name)
            except docker.errors.NotFound:
                return None
        return _record(found, endpoint)

    def run_in(
        self,
        container: Container,
        argv: list[str],
        *,
        user: str = "postgres",
        environment: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> tuple[int, str]:
        """Run ``argv`` (an argument list, no shell) in a running container; its exit code and
        its output (stdout and stderr together).

        ``timeout``: the longest the exec may stay silent (DockerUnavailable past it: not
        asked again); None waits as long as it runs (a base backup of a large shard prints
        nothing for hours), as the SDK's own ``exec_run`` did.

        The output is read as the HTTP response's body, not through the SDK's ``exec_run``:
        that reads the upgraded connection's socket behind http.client's buffer, so frames
        that arrived with the response's headers were dropped, and an exec that printed its
        answer came back empty with exit 0 (seen on a loaded machine, docs/testing.md).
        Without ``Upgrade`` the engine answers ``200`` and the same multiplexed stream, ending
        it by closing the connection."""
        import requests.exceptions
        import urllib3.exceptions

        api = self.client(container.endpoint).api
        doing = f"running {argv[0]} in {container.name}"
        with docker_errors(doing):
            made = api.exec_create(
                container.id, argv, user=user, environment=dict(environment or {})
            )
            try:
                response = api.post(
                    f"{api.base_url}/v{api.api_version}/exec/{made['Id']}/start",
                    data=json.dumps({"Detach": False, "Tty": False}),
                    headers={"Content-Type": "application/json"},
                    stream=True,
                    timeout=(api.timeout, timeout),  # (connecting, each read)
                )
                try:
                    if response.status_code >= 400:
                        raise ProvisioningError(
                            f"{doing}: Docker refused: {response.text.strip()[:200]}"
                        )
                    body = response.raw.read()
                finally:
                    response.close()
            except (requests.exceptions.ReadTimeout, urllib3.exceptions.ReadTimeoutError):
                raise DockerUnavailable(
                    f"{doing}: no answer within {timeout}s from {describe(container.endpoint)}"
                ) from None
            except requests.exceptions.ConnectionError:
                raise  # the engine does not answer: docker_errors says so
            except (urllib3.exceptions.HTTPError, requests.exceptions.RequestException) as exc:
                # the stream broke off mid-read (a dropped connection, TLS, a bad chunk)
                raise ProvisioningError(f"{doing}: the engine broke off: {short(exc)}") from None
            code = api.exec_inspect(made["Id"]).get("ExitCode")
        return int(code if code is not None else -1), demultiplex(body).decode("utf-8", "replace")

    def wait_exit(self, container: Container, *, timeout: float) -> int:
        """Wait for a started container to exit; its exit code (ProvisioningError past
        ``timeout``, the container killed)."""
        import requests.exceptions

        api = self.client(container.endpoint).api
        with docker_errors(f"waiting for {container.name}"):
            try:
                result = api.wait(container.id, timeout=max(1, round(timeout)))
            except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError):
                with contextlib.suppress(Exception):
                    api.kill(container.id)
                raise ProvisioningError(
                    f"{container.name}: did not finish within {timeout:g}s\n"
                    f"{self.log_tail(container)}"
                ) from None
        return int(result.get("StatusCode", -1))

    def remove_container(self, container: Container, *, stop_timeout: int) -> None:
        """Stop a running container cleanly (not a crash recovery later), then remove it."""
        api = self.client(container.endpoint).api
        with docker_errors(f"removing container {container.name}"):
            if container.state in ("running", "paused"):
                api.stop(container.id, timeout=stop_timeout)
            api.remove_container(container.id, force=True)

    def log_tail(self, container: Container | None, lines: int = 12) -> str:
        """The last lines of a container's log, indented, for error messages."""
        import docker.errors
        import requests.exceptions

        if container is None:
            return "  (no container)"
        try:
            raw: Any = self.client(container.endpoint).api.logs(container.id, tail=lines)
        except (
            docker.errors.DockerException,
            requests.exceptions.ConnectionError,
            DockerUnavailable,
        ):
            return "  (log unavailable)"
        text = raw.decode("utf-8", "replace").rstrip() if isinstance(raw, bytes) else str(raw)
        return "\n".join(f"  | {line}" for line in text.splitlines()) or "  (empty log)"

    def close(self) -> None:
        """Close every client."""
        for client in self._clients.values():
            client.close()
        self._clients.clear()


def _labelled(cluster: str) -> dict[str, str | list[str] | bool]:
    """The list filter that selects a cluster's resources."""
    return {"label": f"{LABEL_CLUSTER}={cluster}"}


def _declared_volumes(attrs: dict[str, Any]) -> list[str]:
    return sorted((attrs.get("Config") or {}).get("Volumes") or {})


def demultiplex(stream: bytes) -> bytes:
    """The payloads of a multiplexed exec or attach stream in order, stdout and stderr
    together: each frame is an 8-byte header (the stream, three zero bytes, the payload's
    length big-endian) and its payload. A stream cut inside a frame keeps what arrived."""
    out = bytearray()
    at = 0
    while at + 8 <= len(stream):
        size = int.from_bytes(stream[at + 4 : at + 8], "big")
        out += stream[at + 8 : at + 8 + size]
        at += 8 + size
    return bytes(out)
