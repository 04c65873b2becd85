"""How the CLI reads and writes the backup repository: this machine's file system, or the
repository's engine when that engine is on another host.

The repository is a folder on the host of its engine (``backup: {engine: NAME}``). When that
engine is this machine's (no endpoint, or a ``unix://`` socket), :class:`LocalStore` reads and
writes it directly, as it always did. When it is another host's (``tcp://``, ``ssh://``), this
machine cannot see the folder, and :class:`EngineStore` does the same things in a container of
that engine with the folder bind-mounted at ``/repository``: the running backup node when it
mounts this folder, else a short-lived helper (the cluster's image, no network, ``sleep``),
made on first use and removed when the process ends (a helper left by a killed process stops
by itself and is replaced by the next one). Either way the layout and the files are the same
(docs/backup.md): a repository stays restorable by hand.

Every path given to a store is an absolute path on the repository's host, under its root.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Protocol

from shardctl.docker.backup_specs import (
    LABEL_BACKUP,
    REPOSITORY_TARGET,
    repository_files_spec,
)
from shardctl.docker.records import LABEL_SPEC
from shardctl.errors import InfrastructureError, ProvisioningError

if TYPE_CHECKING:
    from shardctl.config.topology import Placement
    from shardctl.docker.engine import Engines
    from shardctl.docker.records import Container


class RepositoryError(InfrastructureError):
    """The repository is missing, unwritable or full (exit 3)."""


@dataclass(frozen=True)
class Entry:
    """A file or folder found under a listed folder."""

    path: str
    """Relative to the listed folder (``/``-separated)."""
    directory: bool
    size: int
    mtime: float


class Store(Protocol):
    """The file operations the repository needs (paths absolute on the repository's host)."""

    def entries(self, folder: Path, depth: int = 1) -> list[Entry]:
        """What ``folder`` holds down to ``depth`` levels; empty when it is missing."""
        ...

    def is_dir(self, path: Path) -> bool:
        """Whether ``path`` is a folder."""
        ...

    def read(self, path: Path) -> str | None:
        """The text of a file; None when it is missing. RepositoryError when unreadable."""
        ...

    def texts(self, folder: Path, suffix: str) -> list[str]:
        """The texts of the files of ``folder`` named ``*suffix`` (not hidden), by name."""
        ...

    def write(self, path: Path, text: str) -> None:
        """Write a file whole: a temporary file ``.<name>.tmp`` synced, then renamed."""
        ...

    def make_folders(self, *paths: Path) -> None:
        """Make folders (and their parents) that are missing."""
        ...

    def remove(self, paths: Iterable[Path]) -> None:
        """Remove files or whole folders; missing ones are fine."""
        ...

    def prepare(self, folder: Path, subfolders: Iterable[str]) -> None:
        """Make ``folder`` and its ``subfolders``, and prove a file can be written there
        (RepositoryError otherwise)."""
        ...

    def free_bytes(self) -> int | None:
        """Room left on the repository's file system; None when it cannot be read."""
        ...


def _failed(root: Path, what: str, detail: str) -> RepositoryError:
    return RepositoryError(f"backup repository {root}: cannot {what}: {detail}")


class LocalStore:
    """The repository on this machine: plain file-system calls."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def entries(self, folder: Path, depth: int = 1) -> list[Entry]:
        """What ``folder`` holds down to ``depth`` levels; empty when it is missing."""
        found: list[Entry] = []

        def walk(at: Path, prefix: str, left: int) -> None:
            try:
                listed = list(os.scandir(at))
            except OSError:
                return
            for entry in listed:
                try:
                    directory = entry.is_dir()
                    stat = entry.stat()
                except OSError:  # gone meanwhile (pg_receivewal renames its .partial)
                    continue
                path = f"{prefix}{entry.name}"
                found.append(Entry(path, directory, stat.st_size, stat.st_mtime))
                if directory and left > 1:
                    walk(Path(entry.path), f"{path}/", left - 1)

        walk(folder, "", depth)
        return found

    def is_dir(self, path: Path) -> bool:
        """Whether ``path`` is a folder."""
        return path.is_dir()

    def read(self, path: Path) -> str | None:
        """The text of a file; None when it is missing."""
        try:
            return path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            raise RepositoryError(f"{path}: unreadable record: {exc}") from None

    def texts(self, folder: Path, suffix: str) -> list[str]:
        """The texts of the files of ``folder`` named ``*suffix``, by name."""
        if not folder.is_dir():
            return []
        found = []
        for path in sorted(folder.glob(f"*{suffix}")):
            text = self.read(path)
            if text is not None:
                found.append(text)
        return found

    def write(self, path: Path, text: str) -> None:
        """Write a file whole (a synced temporary file, renamed)."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_name(f".{path.name}.tmp")
            with temporary.open("w", encoding="utf-8") as file:
                file.write(text)
                file.flush()
                os.fsync(file.fileno())
            temporary.replace(path)
        except OSError as exc:
            raise _failed(self.root, f"write {path.name}", exc.strerror or str(exc)) from None

    def make_folders(self, *paths: Path) -> None:
        """Make folders that are missing."""
        try:
            for path in paths:
                path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _failed(self.root, "write", exc.strerror or str(exc)) from None

    def remove(self, paths: Iterable[Path]) -> None:
        """Remove files or whole folders; missing ones are fine."""
        for path in paths:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):  # best effort, as rmtree's
                    path.unlink(missing_ok=True)

    def free_bytes(self) -> int | None:
        """Room left on the repository's file system (``statvfs``)."""
        try:
            found = os.statvfs(self.root)
        except OSError:
            return None
        return found.f_bavail * found.f_frsize

    def prepare(self, folder: Path, subfolders: Iterable[str]) -> None:
        """Make the folders and prove a file can be written there."""
        try:
            for sub in subfolders:
                (folder / sub).mkdir(parents=True, exist_ok=True)
            probe = folder / ".write-test"
            probe.write_text("ok", encoding="utf-8")
            probe.unlink()
        except OSError as exc:
            raise _failed(self.root, "write", exc.strerror or str(exc)) from None


# Scripts run in the repository's container (values as arguments, nothing spliced in). Those
# whose output is read are framed (:func:`framed`): between BEGIN and END, so an answer that
# lost its start or its end is told from a short or empty one, and asked again.
BEGIN = "\x1fbegin"
"""The first thing a script whose output is read prints."""
END = "\x1fend"
"""The last thing a script whose output is read prints."""


def framed(script: str) -> str:
    """``script`` printing :data:`BEGIN` first and :data:`END` last, whatever it exits with."""
    return f"printf '\\037begin'; {{ {script}; }}; printf '\\037end'"


_LIST = framed(
    '[ -d "$1" ] && find "$1" -mindepth 1 -maxdepth "$2" -printf "%y\\t%s\\t%T@\\t%P\\n" '
    "2>/dev/null"
)
_TEXTS = framed(
    'for f in "$1"/*"$2"; do [ -f "$f" ] || continue; '
    'printf \'\\036%s\\n\' "${f##*/}"; cat -- "$f" || exit 1; done'
)
# A file there that cannot be read ends the script before END, with cat's reason: an error,
# never the reason's text taken for the file's.
_READ = framed('[ -f "$1" ] && { printf x; cat -- "$1" || exit 1; }')
_IS_DIR = framed('[ -d "$1" ] && printf yes')
_FREE = framed("stat -f -c '%a %S' -- \"$1\"")
_PREPARE = (
    'set -e; folder="$1"; shift; for sub in "$@"; do mkdir -p "$folder/$sub"; done; '
    'echo ok > "$folder/.write-test"; rm -f "$folder/.write-test"'
)
_WRITE = (
    'set -e; folder="${2%/*}"; temporary="$folder/.${2##*/}.tmp"; mkdir -p "$folder"; '
    'cp "$1" "$temporary"; rm -f "$1"; sync "$temporary" 2>/dev/null || sync; '
    'mv -f "$temporary" "$2"'
)
SEPARATOR = "\x1e"
"""Before each file's name in :data:`_TEXTS`'s output (JSON written by us never holds it)."""
ATTEMPTS = 8
"""Runs of a script before its error stands: a helper container looked up again, or output
that arrived cut short, each after a pause growing by :data:`CUT_SHORT_PAUSE`, 7 s in all.
Empty answers on a loaded machine came from the SDK dropping output that arrived with the
exec's response headers, fixed in :meth:`shardctl.docker.engine.Engines.run_in`
(docs/testing.md); the retries stay for a stream that really is cut short."""
CUT_SHORT_PAUSE = 0.25
SCRIPT_TIMEOUT = 60
"""Seconds a repository script may stay silent (a listing or a file's text: a stuck engine or
file system, not a slow one, takes longer): DockerUnavailable, not asked again."""


def parse_entries(output: str) -> list[Entry]:
    """``find -printf '%y\\t%s\\t%T@\\t%P\\n'``'s lines as entries (other lines skipped)."""
    found = []
    for line in output.splitlines():
        kind, _, rest = line.partition("\t")
        size, _, rest = rest.partition("\t")
        mtime, _, path = rest.partition("\t")
        if not path or not size.isdigit():
            continue
        try:
            when = float(mtime)
        except ValueError:
            continue
        found.append(Entry(path, kind == "d", int(size), when))
    return found


def parse_texts(output: str) -> list[str]:
    """:data:`_TEXTS`'s output as the files' texts, in order."""
    texts = []
    for chunk in output.split(SEPARATOR)[1:]:
        _, _, text = chunk.partition("\n")
        texts.append(text)
    return texts


def inside(root: Path, path: Path) -> str:
    """Where ``path`` (on the repository's host, under ``root``) is in the container."""
    relative = PurePosixPath(path.as_posix()).relative_to(PurePosixPath(root.as_posix()))
    return REPOSITORY_TARGET if str(relative) == "." else f"{REPOSITORY_TARGET}/{relative}"


class EngineStore:
    """The repository on another host: the same operations, run in a container of its engine
    that mounts it (see the module)."""

    def __init__(self, placement: Placement, root: Path, owner: str, image: str) -> None:
        from shardctl.docker.engine import Engines

        self.placement = placement
        self.root = root
        self.owner = owner
        """The cluster whose backup node (``<owner>-backup``) may be used."""
        self.image = image
        self.engines: Engines = Engines()
        self._lock = threading.Lock()
        self._container: Container | None = None
        self._helper = False

    # ---------------------------------------------------------- the container

    def _mounts_root(self, container: Container) -> bool:
        try:
            volumes = json.loads(container.labels.get(LABEL_SPEC) or "{}").get("volumes") or {}
        except ValueError:
            return False
        return str(self.root) in volumes

    def _find(self) -> Container:
        with self._lock:
            if self._container is not None:
                return self._container
            engines = self.engines
            node = engines.named(f"{self.owner}-backup", self.placement)
            if node is not None and node.state == "running" and self._mounts_root(node):
                self._container = node
                return node
            spec = repository_files_spec(self.owner, self.image, str(self.root))
            leftover = engines.named(spec.name, self.placement)
            if leftover is not None:
                if leftover.labels.get(LABEL_BACKUP) != "files":
                    raise ProvisioningError(
                        f"a container named {spec.name} exists on {self.placement.name} but is "
                        "not shardctl's repository helper; remove or rename it"
                    )
                engines.remove_container(leftover, stop_timeout=1)
            if engines.image_volumes(self.image, self.placement) is None:
                engines.pull(self.image, self.placement)
            helper = engines.create_container(spec, {}, self.placement)
            engines.start(helper)
            self._container, self._helper = helper, True
            atexit.register(self.close)
            return helper

    def close(self) -> None:
        """Remove the helper container, if one was made."""
        with self._lock:
            container, helper = self._container, self._helper
            self._container, self._helper = None, False
        if container is not None and helper:
            with contextlib.suppress(ProvisioningError, InfrastructureError):
                self.engines.remove_container(container, stop_timeout=1)

    def _run(self, what: str, argv: list[str], *, read: bool = False) -> str:
        """Run ``argv`` as root in the container; its output (``read``: a :func:`framed`
        script's, without the frame, run again while either end is missing). RepositoryError
        unless it exits 0. A container gone meanwhile (the backup node recreated) is looked up
        again."""
        output = ""
        for attempt in range(1, ATTEMPTS + 1):
            container = self._find()
            try:
                code, output = self.engines.run_in(
                    container, argv, user="root", timeout=SCRIPT_TIMEOUT
                )
            except ProvisioningError:
                if attempt == ATTEMPTS:
                    raise
                with self._lock:
                    self._container, self._helper = None, False
                continue
            if code != 0:
                lines = [line for line in output.strip().splitlines() if line.strip()]
                detail = lines[-1] if lines else f"exit {code}"
                raise _failed(self.root, f"{what} on engine {self.placement.name}", detail)
            if not read:
                return output
            if output.startswith(BEGIN) and output.endswith(END):
                return output[len(BEGIN) : -len(END)]
            if attempt < ATTEMPTS:
                time.sleep(CUT_SHORT_PAUSE * attempt)
        raise _failed(
            self.root, f"{what} on engine {self.placement.name}", f"output cut short: {output!r}"
        )

    # ---------------------------------------------------------- operations

    def entries(self, folder: Path, depth: int = 1) -> list[Entry]:
        """What ``folder`` holds down to ``depth`` levels; empty when it is missing."""
        where = inside(self.root, folder)
        argv = ["sh", "-c", _LIST, "sh", where, str(depth)]
        return parse_entries(self._run("list", argv, read=True))

    def is_dir(self, path: Path) -> bool:
        """Whether ``path`` is a folder."""
        argv = ["sh", "-c", _IS_DIR, "sh", inside(self.root, path)]
        return self._run("read", argv, read=True) == "yes"

    def read(self, path: Path) -> str | None:
        """The text of a file; None when it is missing."""
        argv = ["sh", "-c", _READ, "sh", inside(self.root, path)]
        output = self._run(f"read {path.name}", argv, read=True)
        return output[1:] if output.startswith("x") else None

    def texts(self, folder: Path, suffix: str) -> list[str]:
        """The texts of the files of ``folder`` named ``*suffix``, by name."""
        argv = ["sh", "-c", _TEXTS, "sh", inside(self.root, folder), suffix]
        return parse_texts(self._run("read", argv, read=True))

    def write(self, path: Path, text: str) -> None:
        """Write a file whole (a synced temporary file, renamed)."""
        staged = f".shardctl-{uuid.uuid4().hex}"
        for attempt in (1, 2):
            container = self._find()
            try:
                self.engines.put_file(container, "/tmp", staged, text)
                break
            except ProvisioningError:
                if attempt == 2:
                    raise
                with self._lock:
                    self._container, self._helper = None, False
        self._run(
            f"write {path.name}",
            ["sh", "-c", _WRITE, "sh", f"/tmp/{staged}", inside(self.root, path)],
        )

    def make_folders(self, *paths: Path) -> None:
        """Make folders that are missing."""
        if paths:
            self._run("write", ["mkdir", "-p", "--", *(inside(self.root, p) for p in paths)])

    def remove(self, paths: Iterable[Path]) -> None:
        """Remove files or whole folders; missing ones are fine."""
        where = [inside(self.root, p) for p in paths]
        if not where:
            return
        for start in range(0, len(where), 500):  # well within a command line's limit
            self._run("remove", ["rm", "-rf", "--", *where[start : start + 500]])

    def free_bytes(self) -> int | None:
        """Room left on the repository's file system, as ``stat -f`` says there."""
        try:
            argv = ["sh", "-c", _FREE, "sh", inside(self.root, self.root)]
            said = self._run("read", argv, read=True)
        except (RepositoryError, InfrastructureError):
            return None
        blocks, _, size = said.strip().partition(" ")
        return int(blocks) * int(size) if blocks.isdigit() and size.isdigit() else None

    def prepare(self, folder: Path, subfolders: Iterable[str]) -> None:
        """Make the folders and prove a file can be written there."""
        self._run("write", ["sh", "-c", _PREPARE, "sh", inside(self.root, folder), *subfolders])


_SHARED: dict[tuple[str, str, str, str], EngineStore] = {}
_SHARED_LOCK = threading.Lock()


def engine_store(placement: Placement, root: Path, owner: str, image: str) -> EngineStore:
    """The process's one store for this repository on this engine (one client, one helper)."""
    key = (placement.name, str(placement.endpoint), str(root), owner)
    with _SHARED_LOCK:
        store = _SHARED.get(key)
        if store is None or store.image != image:
            store = _SHARED[key] = EngineStore(placement, root, owner, image)
        return store
