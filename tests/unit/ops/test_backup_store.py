"""The repository's two stores: this machine's file system and another host's engine.

The engine store's shell scripts are run here with ``sh`` on a temporary folder (the same
commands the repository's container runs, GNU find included), so their output and the parsing
of it are checked without an engine; tests/integration/test_backup_remote.py runs them in one.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from shardctl.config import topology
from shardctl.docker.backup_specs import LABEL_BACKUP, REPOSITORY_TARGET, repository_files_spec
from shardctl.docker.records import Container, create_arguments
from shardctl.errors import UsageError
from shardctl.ops.backup import store
from shardctl.ops.backup.repository import SEGMENT, Repository, wal_range_of
from shardctl.ops.backup.restore import check_engine
from shardctl.ops.backup.store import (
    ATTEMPTS,
    BEGIN,
    END,
    EngineStore,
    Entry,
    LocalStore,
    RepositoryError,
    parse_entries,
    parse_texts,
)


def _sh(script: str, *args: str) -> str:
    """The script's output as the engine store reads it: BEGIN first and END last, taken off."""
    done = subprocess.run(
        ["sh", "-c", script, "sh", *args], capture_output=True, text=True, check=True
    )
    if script in (store._WRITE, store._PREPARE):
        return done.stdout
    assert done.stdout.startswith(store.BEGIN) and done.stdout.endswith(store.END)
    return done.stdout.removeprefix(store.BEGIN).removesuffix(store.END)


def _layout(root: Path) -> Path:
    wal = root / "c" / "s1" / "wal"
    for generation, names in {
        "1": ["000000010000000000000003", "000000010000000000000004.partial"],
        "2": ["000000020000000000000004", "00000002.history"],
    }.items():
        (wal / generation).mkdir(parents=True)
        for name in names:
            (wal / generation / name).write_bytes(b"x" * (10 if "history" in name else 100))
    os.utime(wal / "2" / "000000020000000000000004", (1_700_000_000.5, 1_700_000_000.5))
    (root / "c" / "s1" / "base" / "b1").mkdir(parents=True)
    (root / "c" / "gone" / "wal").mkdir(parents=True)
    (root / "c" / "backups").mkdir()
    for name, text in {
        "b1.json": '{"name": "b1"}',
        "b2.json": '{"name": "b2"}\n',
        ".b3.json.tmp": "{",
        "notes.txt": "x",
    }.items():
        (root / "c" / "backups" / name).write_text(text, encoding="utf-8")
    return wal


def test_the_engine_listing_script_and_the_local_store_agree(tmp_path: Path) -> None:
    wal = _layout(tmp_path)
    remote = parse_entries(_sh(store._LIST, str(wal), "2"))
    local = LocalStore(tmp_path).entries(wal, depth=2)
    assert {(e.path, e.directory, e.size) for e in remote} == {
        (e.path, e.directory, e.size) for e in local
    }
    mtimes = {e.path: e.mtime for e in local}
    assert all(e.mtime == pytest.approx(mtimes[e.path], abs=0.01) for e in remote)
    by_path = {e.path: e for e in remote}
    assert by_path["1"].directory and not by_path["1/000000010000000000000003"].directory
    assert by_path["2/000000020000000000000004"].size == 100
    assert by_path["2/000000020000000000000004"].mtime == pytest.approx(1_700_000_000.5, abs=0.01)
    assert parse_entries(_sh(store._LIST, str(tmp_path / "missing"), "2")) == []
    assert {e.path for e in parse_entries(_sh(store._LIST, str(wal), "1"))} == {"1", "2"}


def test_the_wal_range_counts_segments_of_every_generation_not_history_files(
    tmp_path: Path,
) -> None:
    _layout(tmp_path)
    repo = Repository(tmp_path, "c", topology.Placement("local", None, "127.0.0.1", "127.0.0.1"))
    found = repo.wal_range("s1")
    assert (found.first, found.last) == ("0000000000000003", "0000000000000004")
    assert found.timelines == (1, 2) and found.size == 300
    assert repo.generations("s1") == [1, 2] and repo.generation("s1") == 2
    assert repo.archive("s1") == (found, 2) and repo.archive("none")[1] == 1
    assert repo.shards_with("wal") == ["gone", "s1"] and repo.shards_with("base") == ["s1"]
    # the same from entries as the engine's find prints them
    entries = parse_entries(_sh(store._LIST, str(tmp_path / "c" / "s1" / "wal"), "2"))
    segments = []
    for entry in entries:
        generation, _, name = entry.path.partition("/")
        match = SEGMENT.fullmatch(name)
        if generation.isdigit() and match is not None and not entry.directory:
            segments.append((entry, match))
    assert wal_range_of(segments) == found


def test_the_engine_texts_script_reads_the_records_alone_in_name_order(tmp_path: Path) -> None:
    _layout(tmp_path)
    folder = tmp_path / "c" / "backups"
    texts = parse_texts(_sh(store._TEXTS, str(folder), ".json"))
    assert texts == ['{"name": "b1"}', '{"name": "b2"}\n']
    assert texts == LocalStore(tmp_path).texts(folder, ".json")
    assert parse_texts(_sh(store._TEXTS, str(tmp_path / "none"), ".json")) == []


def test_the_engine_read_scripts_tell_a_missing_file_from_an_empty_one(tmp_path: Path) -> None:
    (tmp_path / "empty").write_text("", encoding="utf-8")
    assert _sh(store._READ, str(tmp_path / "empty")) == "x"
    assert _sh(store._READ, str(tmp_path / "missing")) == ""
    assert _sh(store._IS_DIR, str(tmp_path)) == "yes"
    assert _sh(store._IS_DIR, str(tmp_path / "empty")) == ""


def test_the_engine_read_scripts_fail_on_a_file_they_cannot_read() -> None:
    """A read that fails is an error (exit 1, no END), never the reason read as the text."""
    unreadable = "/proc/self/mem"  # a regular file that every read of fails, even as root
    for script, args in ((store._READ, [unreadable]), (store._TEXTS, ["/proc/self", "mem"])):
        done = subprocess.run(["sh", "-c", script, "sh", *args], capture_output=True, text=True)
        assert done.returncode == 1 and not done.stdout.endswith(END), (script, done)


def test_the_engine_write_script_renames_a_whole_file_into_place(tmp_path: Path) -> None:
    staged = tmp_path / "staged"
    staged.write_text('{"a": 1}', encoding="utf-8")
    target = tmp_path / "c" / "points" / "p1.json"
    _sh(store._WRITE, str(staged), str(target))
    assert target.read_text(encoding="utf-8") == '{"a": 1}'
    assert not staged.exists() and sorted(os.listdir(target.parent)) == ["p1.json"]


def test_the_engine_prepare_script_makes_the_folders_and_leaves_no_probe(tmp_path: Path) -> None:
    _sh(store._PREPARE, str(tmp_path / "c"), "backups", "points")
    assert sorted(os.listdir(tmp_path / "c")) == ["backups", "points"]


def test_paths_inside_the_repository_container() -> None:
    root = Path("/srv/repo")
    assert store.inside(root, root) == REPOSITORY_TARGET
    assert store.inside(root, root / "c" / "s1" / "wal") == f"{REPOSITORY_TARGET}/c/s1/wal"
    with pytest.raises(ValueError):
        store.inside(root, Path("/etc/passwd"))


def test_parsing_skips_what_is_not_a_listing_line() -> None:
    output = "d\t4096\t1.5\tgen\nf\t7\t2.25\tgen/a b\nfind: gone\n\nf\tx\t1\tbad\n"
    assert parse_entries(output) == [
        Entry("gen", True, 4096, 1.5),
        Entry("gen/a b", False, 7, 2.25),
    ]
    assert parse_texts("") == [] and parse_texts("\x1ea.json\n{}\x1eb.json\n[]") == ["{}", "[]"]


def test_the_repository_helper_is_a_networkless_sleeper_outside_the_cluster() -> None:
    spec = repository_files_spec("demo", "img:1", "/srv/repo")
    arguments = create_arguments(spec)
    assert arguments["network"] == "none" and spec.restart == "no"
    assert arguments["volumes"] == {"/srv/repo": {"bind": REPOSITORY_TARGET, "mode": "rw"}}
    assert spec.entrypoint[0] == "sleep" and int(spec.entrypoint[1]) > 0
    assert spec.labels[LABEL_BACKUP] == "files"
    assert "shardctl.cluster" not in spec.labels  # a restore in place wants nothing running


def test_a_restored_primary_off_the_repository_engine_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "topology.yaml"
    path.write_text(
        "cluster: demo\nimage: img\n"
        "engines: {a: {endpoint: 'tcp://10.9.9.1:2375'}, b: {endpoint: 'tcp://10.9.9.2:2375'}}\n"
        "allow_plaintext: true\n"
        "backup: {repository: /srv/repo, engine: b}\n"
        "shards: [{name: s1, engine: a}, {name: s2, engine: b}]\n",
        encoding="utf-8",
    )
    loaded = topology.load(path)
    archive = Repository.of(loaded)
    check_engine(loaded.node("s2-primary"), archive)
    with pytest.raises(UsageError, match="s1-primary runs on engine a, the repository on b"):
        check_engine(loaded.node("s1-primary"), archive)


def test_the_engine_free_space_script_and_the_local_store_agree(tmp_path: Path) -> None:
    """Both read the room left where the repository is (a full one is named so)."""
    blocks, size = _sh(store._FREE, str(tmp_path)).split()
    local = LocalStore(tmp_path).free_bytes()
    assert local is not None and local > 0
    assert abs(int(blocks) * int(size) - local) <= 64 << 20  # others write meanwhile


class _Answers:
    """A stand-in for the engines of a remote repository: each exec answers the next of
    ``answers`` (exit 0)."""

    def __init__(self, *answers: str) -> None:
        self.answers = list(answers)
        self.asked = 0

    def run_in(
        self, container: object, argv: list[str], *, user: str, timeout: float | None = None
    ) -> tuple[int, str]:
        self.asked += 1
        return 0, self.answers.pop(0)


def _remote_store(engines: _Answers) -> EngineStore:
    placement = topology.Placement("b", "unix:///nowhere.sock", "10.0.0.2", "10.0.0.2")
    store = EngineStore(placement, Path("/repo"), "c", "image")
    store._container = Container(
        "id", "c-backup", "running", 0, labels={}, environment={}, endpoint=placement
    )
    store.engines = engines  # type: ignore[assignment]
    return store


def test_a_listing_that_arrives_cut_short_is_asked_again_with_a_pause(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pauses: list[float] = []
    monkeypatch.setattr(store, "time", SimpleNamespace(sleep=pauses.append))
    entry = "f\t3\t1.5\tb1/file\n"
    engines = _Answers("", "", "", "", "", BEGIN + entry + END)
    assert [e.path for e in _remote_store(engines).entries(Path("/repo"))] == ["b1/file"]
    assert engines.asked == 6 and pauses == [0.25, 0.5, 0.75, 1.0, 1.25]

    nothing = _Answers(*[""] * ATTEMPTS)
    with pytest.raises(RepositoryError, match="output cut short"):
        _remote_store(nothing).entries(Path("/repo"))
    assert nothing.asked == ATTEMPTS


def test_an_answer_that_lost_its_start_is_not_taken_for_a_missing_file(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What the Docker SDK's exec_run once did under load: the first bytes (the ``x`` and the
    record) arrived with the response's headers and were dropped, the end marker came after.
    Read as an answer, that is "no such file": a restore point said to be missing while the
    listing names it. Without its start the answer is asked for again."""
    monkeypatch.setattr(store, "time", SimpleNamespace(sleep=lambda _: None))
    record = '{"name": "p1"}'
    engines = _Answers(END, "begin" + END, BEGIN + "x" + record + END)
    assert _remote_store(engines).read(Path("/repo/c/points/p1.json")) == record
    assert engines.asked == 3

    missing = _Answers(BEGIN + END)
    assert _remote_store(missing).read(Path("/repo/c/points/p2.json")) is None
    assert missing.asked == 1

    lost = _Answers(*[END] * ATTEMPTS)
    with pytest.raises(RepositoryError, match="output cut short"):
        _remote_store(lost).read(Path("/repo/c/points/p1.json"))
