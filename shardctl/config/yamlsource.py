"""YAML text to plain data with the line of every key and item, refusing what costs too much.

A topology is a few mappings, lists, strings, numbers and booleans. This reader builds exactly
that and refuses everything else with a :class:`YamlProblem` that carries the line (and column)
of the offending text, so that no input can end in a traceback or run away:

- bytes that are not UTF-8 (or UTF-16 with a BOM) text, NUL and other control characters;
- tags other than the core scalar ones (``!ENV``, ``!!python/...``, ``!!binary``, ``!!set``);
- keys that are not text (a list, a mapping, null, a boolean, a number);
- numbers longer than any topology value (Python's int() is slow on them, or refuses them);
- nesting deeper than :data:`MAX_DEPTH`, aliases that contain themselves, and aliases that
  expand past a budget proportional to the file ("billion laughs").

Merge keys (``<<: *base``, ``<<: [*a, *b]``) are resolved as docker compose does: keys written
in the mapping win over merged ones, earlier sources over later ones; a merged key keeps the
line where it is written. Plain scalars that look like dates stay strings, as no topology value
is a date. The fast libyaml parser is used when PyYAML has it, the pure-Python one otherwise.

This module imports nothing from the package: it knows neither file names nor topology keys.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.events import AliasEvent, Event
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.resolver import Resolver

Loc = tuple[str | int, ...]
"""Where a value sits: keys and list indexes from the document's root."""

MAX_BYTES = 8 * 1024 * 1024
"""Largest file read: ten thousand shards take well under a megabyte."""
MAX_DEPTH = 64
"""Deepest nesting of lists and mappings; a topology needs four levels."""
MAX_NUMBER_CHARS = 100
"""Longest integer or float literal; the longest topology number has 20 digits."""
ALIAS_ALLOWANCE = 10_000
"""Values aliases may add beyond ten times the values written in the file."""

_TAG = "tag:yaml.org,2002:"
_MERGE = _TAG + "merge"
_STR = _TAG + "str"
_NUMBER_TAGS = {_TAG + "int", _TAG + "float"}
_SCALARS: dict[str, Callable[[SafeConstructor, ScalarNode], object]] = {
    _TAG + "str": SafeConstructor.construct_yaml_str,
    _TAG + "int": SafeConstructor.construct_yaml_int,
    _TAG + "float": SafeConstructor.construct_yaml_float,
    _TAG + "bool": SafeConstructor.construct_yaml_bool,
    _TAG + "null": SafeConstructor.construct_yaml_null,
}
_KINDS = {_TAG + "int": "an integer", _TAG + "float": "a number"}
_BREAKS = re.compile("\r\n|[\r\n\x85\u2028\u2029]")
"""What YAML counts as a line break, so that lines counted here match the parser's."""
_UNPRINTABLE = re.compile("[^\t\n\r\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
"""Characters YAML does not allow in a stream (its 'printable' set, complemented)."""
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)


class Mark(Protocol):
    """Where the parser stands (PyYAML's and libyaml's marks alike): 0-based line and column."""

    @property
    def line(self) -> int: ...

    @property
    def column(self) -> int: ...


class YamlProblem(Exception):
    """Why the text is refused, and where: 1-based line and column, when there is one."""

    def __init__(self, message: str, line: int | None = None, column: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.column = column

    @classmethod
    def at(cls, message: str, mark: Mark | None) -> YamlProblem:
        """A problem at a parser mark (0-based) or, without one, at no line."""
        if mark is None:
            return cls(message)
        return cls(message, mark.line + 1, mark.column + 1)


def short(value: object, limit: int = 40) -> str:
    """``repr(value)``, cut to about ``limit`` characters with the full length said."""
    text = value if isinstance(value, str) else repr(value)
    if len(text) <= limit:
        return repr(value)
    return f"{text[:limit]!r}... ({len(text):,} characters)"


def decode(raw: bytes) -> str:
    """The text of a topology file: UTF-8 (or UTF-8/16/32 with a BOM), BOM removed."""
    if len(raw) > MAX_BYTES:
        raise YamlProblem(
            f"the file has {len(raw):,} bytes; a topology file is at most {MAX_BYTES:,}"
        )
    codec = next((c for bom, c in _BOMS if raw.startswith(bom)), "utf-8")
    try:
        text = raw.decode(codec)
    except UnicodeDecodeError as exc:
        line, column = _position(raw[: exc.start].decode(codec, errors="replace"), None)
        raise YamlProblem(
            f"byte 0x{raw[exc.start]:02x} is not {codec.upper()} text (save the file as UTF-8)",
            line,
            column,
        ) from None
    return text.removeprefix("\ufeff")


def check_text(text: str) -> None:
    """Refuse characters YAML does not allow (NUL, other control characters) with their line."""
    bad = _UNPRINTABLE.search(text)
    if bad is None:
        return
    char = bad.group()
    what = "a NUL byte" if char == "\0" else f"the control character U+{ord(char):04X}"
    line, column = _position(text, bad.start())
    raise YamlProblem(f"{what} is not allowed in YAML text", line, column)


def load(text: str) -> tuple[Any, dict[Loc, int]]:
    """Parse one YAML document: its data (None when empty) and the line of every location."""
    text = text.removeprefix("\ufeff")
    check_text(text)
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
    except YamlProblem:
        raise
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "cannot be parsed"
        if problem.startswith("but ") and exc.context:
            problem = f"{exc.context}, {problem}"
        raise YamlProblem.at(f"not valid YAML: {_cut(problem)}", mark) from None
    except yaml.YAMLError as exc:
        raise YamlProblem(f"not valid YAML: {_cut(str(exc).splitlines()[0])}") from None
    except RecursionError:  # belt and braces: MAX_DEPTH stops nesting well before this
        raise YamlProblem(f"nested deeper than {MAX_DEPTH} levels") from None
    finally:
        loader.dispose()
    if root is None:
        return None, {}
    builder = _Builder(loader)
    data = builder.value(root, (), root.start_mark)
    return data, builder.lines


def _cut(text: str, limit: int = 200) -> str:
    """A parser's message, cut: it may quote an anchor or a character run of any length."""
    return text if len(text) <= limit else f"{text[:limit]}..."


def _position(text: str, index: int | None) -> tuple[int, int]:
    """1-based (line, column) of ``text[index]`` (of the end of ``text`` when None)."""
    end = len(text) if index is None else index
    line, start = 1, 0
    for match in _BREAKS.finditer(text, 0, end):
        line, start = line + 1, match.end()
    return line, end - start + 1


class _Resolver(Resolver):
    """YAML 1.1 implicit types, minus timestamps and '=' (no topology value is one)."""


_Resolver.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in {_TAG + "timestamp", _TAG + "value"}]
    for first, resolvers in Resolver.yaml_implicit_resolvers.items()
}


class _Composer(Composer):
    """PyYAML's composer, plus a depth limit, a count of values and where each alias is used."""

    def __init__(self) -> None:
        super().__init__()
        self.depth = 0
        self.written = 0
        self.alias_marks: dict[tuple[int, int], Mark] = {}

    if TYPE_CHECKING:  # provided by the parser this composer is mixed with

        def peek_event(self) -> Event: ...

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        """Compose one node; count it, bound the depth, remember where an alias stands."""
        event = self.peek_event()
        if isinstance(event, AliasEvent):
            node = super().compose_node(parent, index)
            if parent is not None and index is not None and event.start_mark is not None:
                self.alias_marks[(id(parent), _slot(index))] = event.start_mark
            return node
        if self.depth >= MAX_DEPTH:
            raise YamlProblem.at(f"nested deeper than {MAX_DEPTH} levels", event.start_mark)
        self.depth += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self.depth -= 1
        self.written += 1
        return node


def _slot(index: object) -> int:
    """The key of a child in its parent: a list index, or the identity of a mapping key node."""
    return index if isinstance(index, int) else id(index)


try:
    from yaml._yaml import CParser
except ImportError:  # pragma: no cover - PyYAML built without libyaml
    from yaml.parser import Parser
    from yaml.reader import Reader
    from yaml.scanner import Scanner

    class _Loader(Reader, Scanner, Parser, _Composer, _Resolver):
        def __init__(self, text: str) -> None:
            Reader.__init__(self, text)
            Scanner.__init__(self)
            Parser.__init__(self)
            _Composer.__init__(self)
            _Resolver.__init__(self)

else:

    class _Loader(_Composer, CParser, _Resolver):  # type: ignore[no-redef]
        # The composer's Python methods come first in the MRO, so libyaml only scans and
        # parses: depth, counts and alias positions are this module's.
        def __init__(self, text: str) -> None:
            CParser.__init__(self, text)
            _Composer.__init__(self)
            _Resolver.__init__(self)


Pair = tuple[str, ScalarNode, Node, Mark]
"""A key, its node, the value node, and where the value is written (an alias's own place)."""


class _Builder:
    """Plain data from composed nodes, with the budget, loop and type checks of this module."""

    def __init__(self, loader: _Loader) -> None:
        self.lines: dict[Loc, int] = {}
        self.alias_marks = loader.alias_marks
        self.budget = 10 * loader.written + ALIAS_ALLOWANCE
        self.open: set[int] = set()
        self.expanding: list[Mark] = []
        """The aliases being expanded, outermost first: where a runaway expansion is written."""
        self.constructor = SafeConstructor()

    def spend(self, mark: Mark) -> None:
        self.budget -= 1
        if self.budget < 0:
            raise YamlProblem.at(
                "aliases expand to far more values than the file holds; refusing to expand "
                "them (write the values out, or alias smaller pieces)",
                self.expanding[0] if self.expanding else mark,
            )

    def where(self, parent: Node, slot: int, child: Node) -> Mark:
        return self.alias_marks.get((id(parent), slot), child.start_mark)

    def value(self, node: Node, loc: Loc, mark: Mark) -> Any:
        self.spend(mark)
        self.lines.setdefault(loc, mark.line + 1)
        if isinstance(node, ScalarNode):
            return self.scalar(node, mark)
        if id(node) in self.open:
            raise YamlProblem.at("this alias refers to a value that contains it (a loop)", mark)
        self.open.add(id(node))
        alias = mark is not node.start_mark
        if alias:
            self.expanding.append(mark)
        try:
            if isinstance(node, SequenceNode):
                self.expect(node, _TAG + "seq", mark)
                return [
                    self.value(item, (*loc, i), self.where(node, i, item))
                    for i, item in enumerate(node.value)
                ]
            assert isinstance(node, MappingNode)
            self.expect(node, _TAG + "map", mark)
            result: dict[str, Any] = {}
            for key, key_node, value_node, value_mark in self.pairs(node):
                self.lines[(*loc, key)] = key_node.start_mark.line + 1
                result[key] = self.value(value_node, (*loc, key), value_mark)
            return result
        finally:
            self.open.discard(id(node))
            if alias:
                self.expanding.pop()

    def expect(self, node: Node, tag: str, mark: Mark) -> None:
        if node.tag != tag:
            raise YamlProblem.at(f"unsupported tag {_tag_text(node.tag)}", node.start_mark or mark)

    def scalar(self, node: ScalarNode, mark: Mark) -> object:
        if node.tag == _STR:  # most values: skip the constructor's bookkeeping
            return node.value
        construct = _SCALARS.get(node.tag)
        if construct is None:
            raise YamlProblem.at(
                f"unsupported tag {_tag_text(node.tag)} (a topology holds plain text, numbers, "
                "booleans, lists and mappings)",
                node.start_mark,
            )
        if node.tag in _NUMBER_TAGS and len(node.value) > MAX_NUMBER_CHARS:
            raise YamlProblem.at(
                f"a number of {len(node.value):,} characters is not a topology value",
                node.start_mark,
            )
        try:
            return construct(self.constructor, node)
        except (ValueError, TypeError, ArithmeticError, yaml.YAMLError):
            raise YamlProblem.at(
                f"this value cannot be read as {_KINDS.get(node.tag, _tag_text(node.tag))}",
                node.start_mark,
            ) from None

    def pairs(self, node: MappingNode) -> list[Pair]:
        """The mapping's (key, ...) pairs with merge keys resolved; a written key twice is an
        error, a merged key is overridden by a written one and by an earlier source."""
        written: dict[str, Pair] = {}
        merged: dict[str, Pair] = {}
        for key_node, value_node in node.value:
            self.spend(key_node.start_mark)
            if key_node.tag == _MERGE and isinstance(key_node, ScalarNode):
                mark = self.where(node, id(key_node), value_node)
                for source in self.merge_sources(mark, value_node):
                    for pair in self.source_pairs(source, mark):
                        merged.setdefault(pair[0], pair)
                continue
            key = self.key(key_node)
            if key in written:
                raise YamlProblem.at(f"key {short(key)} appears twice", key_node.start_mark)
            assert isinstance(key_node, ScalarNode)
            written[key] = (key, key_node, value_node, self.where(node, id(key_node), value_node))
        return [p for k, p in merged.items() if k not in written] + list(written.values())

    def merge_sources(self, mark: Mark, value: Node) -> list[MappingNode]:
        sources = value.value if isinstance(value, SequenceNode) else [value]
        if not all(isinstance(s, MappingNode) for s in sources):
            raise YamlProblem.at(
                "'<<' merges a mapping or a list of mappings (written '<<: *name')", mark
            )
        return [s for s in sources if isinstance(s, MappingNode)]

    def source_pairs(self, source: MappingNode, mark: Mark) -> list[Pair]:
        if id(source) in self.open:
            raise YamlProblem.at("'<<' merges a mapping that contains it (a loop)", mark)
        self.open.add(id(source))
        self.expanding.append(mark)
        try:
            return self.pairs(source)
        finally:
            self.open.discard(id(source))
            self.expanding.pop()

    def key(self, node: Node) -> str:
        if not isinstance(node, ScalarNode):
            kind = "a list" if isinstance(node, SequenceNode) else "a mapping"
            raise YamlProblem.at(f"a key must be a name, not {kind}", node.start_mark)
        key = self.scalar(node, node.start_mark)
        if isinstance(key, str):
            return key
        written = node.value or "(empty)"
        what = "null" if key is None else "a boolean" if isinstance(key, bool) else "a number"
        raise YamlProblem.at(
            f"key {short(written)} is read as {what}; a key must be a name "
            "(quote it if you mean the text)",
            node.start_mark,
        )


def _tag_text(tag: str | None) -> str:
    """A tag as written: ``!!python/object`` rather than ``tag:yaml.org,2002:python/object``."""
    text = tag or "?"
    if text.startswith(_TAG):
        text = "!!" + text.removeprefix(_TAG)
    return short(text)
