"""What ``up --plan`` says changed in a container's recorded spec."""

from __future__ import annotations

import json

from shardctl.ops.changes import Change, NodeChange, Plan, spec_differences


def record(**over: object) -> str:
    base: dict[str, object] = {
        "image": "postgres:15.6",
        "command": ["-c", "port=5432", "-c", "wal_level=logical"],
        "environment": {"PGDATA": "/var/lib/postgresql/data/pgdata"},
        "ports": {"5432/tcp": ["127.0.0.1", 20001]},
        "volumes": {"c-shard-0-primary": {"bind": "/var/lib/postgresql/data", "mode": "rw"}},
        "entrypoint": "abc",
    }
    base.update(over)
    return json.dumps(base)


def test_each_difference_is_named_old_to_new() -> None:
    old = record()
    new = record(
        image="postgres:15.7",
        command=["-c", "port=5432", "-c", "wal_level=replica"],
        ports={"5432/tcp": ["127.0.0.1", 20011]},
        entrypoint="def",
    )
    assert spec_differences(old, new) == [
        "setting wal_level: logical → replica",
        "bootstrap script: changed by this shardctl version",
        "image: postgres:15.6 → postgres:15.7",
        'port 5432/tcp: ["127.0.0.1", 20001] → ["127.0.0.1", 20011]',
    ]


def test_a_container_without_a_record_says_so() -> None:
    assert "earlier shardctl" in spec_differences(None, record())[0]
    assert spec_differences("{not json", record()) == ["its recorded configuration is unreadable"]


def test_only_running_nodes_roll_by_shard() -> None:
    plan = Plan("img", "15.18")
    plan.nodes = [
        NodeChange("s0", "s0-primary", "primary", Change.RESTART),
        NodeChange("s0", "s0-replica-1", "replica", Change.RELOAD),
        NodeChange("s1", "s1-primary", "primary", Change.RECREATE, running=False),
        NodeChange("s1", "s1-replica-1", "replica", Change.RECREATE),
    ]
    assert plan.rolling() == {
        "s0": {"s0-primary": Change.RESTART},
        "s1": {"s1-replica-1": Change.RECREATE},
    }
    assert not plan.empty and plan.action("s0-replica-1") is Change.RELOAD
