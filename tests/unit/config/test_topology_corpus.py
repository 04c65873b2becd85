"""Every malformed topology is one clean error, every valid one validates: a corpus run through
the loader and through the real CLI.

``tests/topologies/bad/*.yaml`` each start with ``# expect: LINE: FRAGMENT`` (and optionally
``# secret: TEXT``, which the answer must never contain); ``good/*.yaml`` must validate. Files
too large to keep in the repository are generated below.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shardctl.config import topology
from shardctl.config.schema import Replication
from shardctl.errors import TopologyError
from tests.conftest import REPO

CORPUS = REPO / "tests" / "topologies"
MAX_CHARS = 2000


@dataclass(frozen=True)
class Expected:
    line: int
    fragment: str
    secret: str | None


def expectation(raw: bytes) -> Expected:
    head = raw.split(b"\n", 2)
    found = re.fullmatch(rb"# expect: (\d+): (.*)", head[0])
    assert found, "a bad corpus file starts with '# expect: LINE: FRAGMENT'"
    secret = re.fullmatch(rb"# secret: (.*)", head[1]) if len(head) > 1 else None
    return Expected(
        int(found[1]), found[2].decode(), secret[1].decode() if secret is not None else None
    )


def _many_shards(n: int, *, valid: bool) -> str:
    lines = ["cluster: big", "shards:"]
    for i in range(n):
        lines.append(f"  - name: s-{i}")
        if valid:  # 10 engines, a thousand shards each, explicit ports that do not clash
            lines += [f"    engine: ssh://host-{i % 10}", f"    port: {10000 + (i // 10) * 10}"]
    return "\n".join(lines) + "\n"


GENERATED_BAD: dict[str, tuple[Callable[[], bytes], Expected]] = {
    "huge-cluster-name": (
        lambda: b"cluster: " + b"a" * 1_000_000 + b"\nshards: [{name: a}]\n",
        Expected(1, "is not a valid name", None),
    ),
    "huge-top-level-scalar": (
        lambda: b"x" * 300_000 + b"\n",
        Expected(1, "expected a mapping of topology keys", None),
    ),
    "huge-key": (
        lambda: b"cluster: demo\n" + b"k" * 1000 + b": 1\nshards: [{name: a}]\n",
        Expected(2, "unknown key 'kkkk", None),
    ),
    "huge-password-env": (
        lambda: (
            b"cluster: demo\ncredentials: {password_env: '"
            + b"s3cr3t" * 100_000
            + b"'}\nshards: [{name: a}]\n"
        ),
        Expected(2, "the value is not shown", "s3cr3ts3cr3t"),
    ),
    "password-env-lowercase-unset": (
        lambda: b"cluster: demo\ncredentials: {password_env: hunter2xyz}\nshards: [{name: a}]\n",
        Expected(2, "does not look like a variable name", "hunter2xyz"),
    ),
    "deep-flow-nesting": (
        lambda: b"cluster: demo\nshards: " + b"[" * 100_000 + b"]" * 100_000 + b"\n",
        Expected(2, "not valid YAML", None),
    ),
    "deep-flow-nesting-shallow-enough-for-libyaml": (
        lambda: b"cluster: demo\nshards: " + b"[" * 500 + b"]" * 500 + b"\n",
        Expected(2, "nested deeper than 64 levels", None),
    ),
    "ten-thousand-shards-over-the-ports": (
        lambda: _many_shards(10_000, valid=False).encode(),
        Expected(1125, "shards[1122]: port 65540 of s-1122-primary is above 65535", None),
    ),
    "file-too-large": (
        lambda: b"cluster: demo\nshards: [{name: a}]\n" + b"#" * (9 * 1024 * 1024) + b"\n",
        Expected(0, "a topology file is at most", None),
    ),
}
GENERATED_GOOD: dict[str, Callable[[], bytes]] = {
    "ten-thousand-shards": lambda: _many_shards(10_000, valid=True).encode(),
}

BAD = sorted((CORPUS / "bad").glob("*.yaml"))
GOOD = sorted((CORPUS / "good").glob("*.yaml"))


@pytest.fixture
def bad_file(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, Expected]:
    """A malformed topology (kept or generated) and what its answer must say."""
    name: str = request.param
    if name in GENERATED_BAD:
        make, expected = GENERATED_BAD[name]
        path = tmp_path / f"{name}.yaml"
        path.write_bytes(make())
        return path, expected
    path = CORPUS / "bad" / name
    return path, expectation(path.read_bytes())


@pytest.fixture
def good_file(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """A valid topology, kept or generated."""
    name: str = request.param
    if name in GENERATED_GOOD:
        path = tmp_path / f"{name}.yaml"
        path.write_bytes(GENERATED_GOOD[name]())
        return path
    return CORPUS / "good" / name


BAD_NAMES = [p.name for p in BAD] + list(GENERATED_BAD)
GOOD_NAMES = [p.name for p in GOOD] + list(GENERATED_GOOD)


def assert_one_clean_answer(text: str, path: Path, expected: Expected) -> None:
    """The contract of every answer to a malformed file (the CLI adds its 'error: ')."""
    text = text.removeprefix("error: ")
    lines = [line for line in text.splitlines() if line.strip()]
    assert 1 <= len(lines) <= 2, text[:3000]
    assert len(text) <= MAX_CHARS, text[:3000]
    assert "Traceback" not in text
    where = f"{path}:{expected.line}: " if expected.line else f"{path}: "
    assert text.startswith(where), text[:500]
    assert expected.fragment in text, text[:500]
    if expected.secret:
        assert expected.secret not in text


def test_the_corpus_is_there() -> None:
    assert len(BAD) >= 80 and len(GOOD) >= 10


@pytest.mark.parametrize("bad_file", BAD_NAMES, indirect=True)
def test_a_malformed_file_is_one_error_with_its_line(bad_file: tuple[Path, Expected]) -> None:
    path, expected = bad_file
    with pytest.raises(TopologyError) as caught:
        topology.load(path)
    assert_one_clean_answer(str(caught.value), path, expected)


@pytest.mark.parametrize("good_file", GOOD_NAMES, indirect=True)
def test_a_valid_file_validates(good_file: Path) -> None:
    assert topology.load(good_file).nodes


def test_merge_keys_resolve_as_in_compose() -> None:
    spec = topology.load(CORPUS / "good" / "merge-keys.yaml").spec
    assert [(s.name, s.replicas, s.replication) for s in spec.shards] == [
        ("shard-0", 2, Replication.SYNC),
        ("shard-1", 1, Replication.SYNC),  # written keys win over merged ones
        ("shard-2", 2, Replication.SYNC),
    ]
    assert spec.shards[2].engine == "ssh://db-host-2"


def test_every_documented_key_is_read() -> None:
    spec = topology.load(CORPUS / "good" / "every-key.yaml").spec
    assert spec.postgres["fsync"] is False
    assert spec.postgres["log_min_duration_statement"] == "2024-01-01"  # dates stay text
    assert spec.shards[0].replication is Replication.SYNC
    assert spec.credentials.password_file == "password.txt"


def test_encodings_and_line_endings_read_the_same() -> None:
    minimal = topology.load(CORPUS / "good" / "minimal.yaml").spec
    for name in ("bom.yaml", "utf16.yaml", "markers.yaml"):
        assert topology.load(CORPUS / "good" / name).spec == minimal, name


def _run(args: list[str], home: Path) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home / "home"),
        "XDG_CONFIG_HOME": str(home / "config"),
        "SHARDCTL_SECRETS_DIR": str(home / "secrets"),
        # Nothing can be created on an engine that is not there; exit 2 proves validation
        # came first (an unreachable engine is exit 3).
        "DOCKER_HOST": "unix:///nonexistent/shardctl-corpus.sock",
    }
    return subprocess.run(
        [sys.executable, "-m", "shardctl", *args],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        cwd=home,
        timeout=60,
    )


def _tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.parametrize("bad_file", BAD_NAMES, indirect=True)
def test_the_cli_answers_a_malformed_file_with_exit_2_and_creates_nothing(
    bad_file: tuple[Path, Expected], tmp_path: Path
) -> None:
    path, expected = bad_file
    home = tmp_path / "run"
    home.mkdir()
    corpus_before = _tree(CORPUS)
    result = _run(["validate", "-f", str(path)], home)
    assert result.returncode == 2, result.stderr[:3000]
    assert result.stdout == ""
    assert_one_clean_answer(result.stderr, path, expected)
    assert _tree(home) == []
    assert _tree(CORPUS) == corpus_before


@pytest.mark.parametrize("good_file", GOOD_NAMES, indirect=True)
def test_the_cli_validates_a_valid_file(good_file: Path, tmp_path: Path) -> None:
    result = _run(["validate", "-f", str(good_file), "-o", "json"], tmp_path)
    assert result.returncode == 0, result.stderr[:3000]
    assert '"cluster"' in result.stdout


@pytest.mark.parametrize(
    "name", ["password-env-unset.yaml", "setting-port.yaml", "merge-bad-merged-value.yaml"]
)
def test_up_on_a_malformed_file_fails_as_validate_does_and_creates_nothing(
    name: str, tmp_path: Path
) -> None:
    path = CORPUS / "bad" / name
    result = _run(["up", "-f", str(path)], tmp_path)
    assert result.returncode == 2, result.stderr[:3000]
    assert result.stdout == ""
    assert_one_clean_answer(result.stderr, path, expectation(path.read_bytes()))
    assert _tree(tmp_path) == []  # no generated secrets file


MUTATION_BASES = [
    (CORPUS / "good" / name).read_text(encoding="utf-8")
    for name in ("every-key.yaml", "merge-keys.yaml", "anchors.yaml", "json.yaml", "crlf.yaml")
]
YAML_PIECES = [
    *":-[]{},&*!|>'\"#%@`?<=~\n\t \r\x00\x1b\xff\u2028\ufeff",
    "<<: ",
    "- ",
    ": ",
    "&a ",
    "*a",
    "!!python/object:os.system ",
    "!ENV ",
    "!!binary ",
    "yes",
    "null",
    "~",
    ".inf",
    "1e999",
    "9" * 50,
    "2024-13-45",
    "\n  - name: x\n",
    "\n? [a]\n: 1\n",
    "---\n",
    "...\n",
]


@st.composite
def mutated(draw: st.DrawFn) -> str:
    text = draw(st.sampled_from(MUTATION_BASES))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(text)))
        action = draw(st.sampled_from(["insert", "delete", "replace", "duplicate-line"]))
        piece = draw(st.sampled_from(YAML_PIECES) | st.text(max_size=5))
        if action == "insert":
            text = text[:at] + piece + text[at:]
        elif action == "delete":
            text = text[:at] + text[at + draw(st.integers(1, 20)) :]
        elif action == "replace":
            text = text[:at] + piece + text[at + len(piece) :]
        else:
            lines = text.splitlines(keepends=True)
            if lines:
                i = draw(st.integers(0, len(lines) - 1))
                lines.insert(i, lines[i])
            text = "".join(lines)
    return text


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=mutated())
def test_a_mutated_valid_file_never_ends_in_a_traceback(text: str) -> None:
    path = CORPUS / "good" / "mutated.yaml"  # never written: names the file and its folder
    try:
        topology.parse(text, path)
    except TopologyError as exc:
        message = str(exc)
        assert message.startswith(f"{path}"), message
        assert len([line for line in message.splitlines() if line.strip()]) <= 2
        assert len(message) <= MAX_CHARS


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=200) | mutated().map(lambda t: t.encode("utf-8", "replace")))
def test_any_bytes_are_read_or_refused_cleanly(
    raw: bytes, tmp_path_factory: pytest.TempPathFactory
) -> None:
    path = tmp_path_factory.mktemp("bytes") / "topology.yaml"
    path.write_bytes(raw)
    try:
        topology.load(path)
    except TopologyError as exc:
        assert len(str(exc)) <= MAX_CHARS
