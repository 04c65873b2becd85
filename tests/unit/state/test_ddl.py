"""The protocol's schema file: package data, and its literals are the Python constants."""

from __future__ import annotations

from shardctl.state import ddl, fence
from shardctl.state.fence import RangeState


def test_the_schema_file_spells_the_protocol_constants() -> None:
    text = ddl.schema_sql()
    assert f"ERRCODE = '{fence.FENCE_SQLSTATE}'" in text
    states = ", ".join(f"'{s.value}'" for s in RangeState)
    assert f"CHECK (state IN ({states}))" in text
    refused = ", ".join(f"'{s.value}'" for s in (RangeState.FENCED, RangeState.MOVED))
    assert f"IF found.state IN ({refused}) THEN" in text
    assert f"ELSIF found.state = '{RangeState.CAPTURING.value}' AND" in text
    assert "DEFAULT '{}'" in text
    # The guard triggers are named as ddl looks them up, and re-armed by statements that list
    # or lift ranges, with the tables locked before: whatever session_replication_role says.
    for suffix in ("", "_update", "_delete"):
        assert f'CREATE OR REPLACE TRIGGER "{ddl.GUARD_TRIGGER}{suffix}" BEFORE' in text
    assert "BEFORE INSERT OR DELETE ON shardctl.moving" in text
    assert "ENABLE ALWAYS TRIGGER moving_lock" in text
    assert "ENABLE ALWAYS TRIGGER moving_rearm" in text


def test_the_schema_file_has_no_leftover_placeholders() -> None:
    # It is sent as it is: a format placeholder or a doubled brace would reach the server.
    text = ddl.schema_sql()
    assert "{{" not in text and "}}" not in text
    assert "{" not in text.replace("'{}'", "")
