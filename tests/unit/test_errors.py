"""The exception tree drawn in shardctl.errors is the tree of its classes, exit codes included."""

from __future__ import annotations

import re

from shardctl import errors


def drawn() -> list[tuple[int, str, int]]:
    """(depth, class name, exit code) for each line of the tree in the module docstring."""
    lines = []
    for line in (errors.__doc__ or "").splitlines():
        found = re.match(r"^    ([│├└─ ]*)(\w+)\s+\(exit (\d)\)", line)
        if found:
            lines.append((len(found.group(1)) // 4, found.group(2), int(found.group(3))))
    return lines


def test_the_drawn_tree_is_the_class_tree() -> None:
    tree = drawn()
    classes = {
        name: cls
        for name, cls in vars(errors).items()
        if isinstance(cls, type) and issubclass(cls, errors.ShardctlError)
    }
    assert sorted(name for _, name, _ in tree) == sorted(classes)
    parents: list[str] = []
    for depth, name, code in tree:
        parents = parents[:depth]
        cls = classes[name]
        if parents:
            assert cls.__bases__ == (classes[parents[-1]],), name
        assert cls.exit_code == code, name
        parents.append(name)
