"""Keys and values the load test makes: the bulk and shortcut paths make what the plain ones
make."""

from __future__ import annotations

import uuid

from hypothesis import given
from hypothesis import strategies as st

from shardctl.workload.target import Column, Target

USERS = Target("users", "id", "uuid", (Column("first_name", "text"), Column("last_name", "text")))
MIXED = Target(
    "t", "id", "bigint",
    (Column("name", "character varying", 8), Column("n", "integer"), Column("note", "text")),
)  # fmt: skip


@given(st.binary(min_size=0, max_size=16 * 40))
def test_keys_made_in_bulk_are_those_made_one_by_one(raw: bytes) -> None:
    for target in (USERS, MIXED):
        whole = raw[: len(raw) // 16 * 16]
        expected = [target.new_key(whole[i : i + 16]) for i in range(0, len(whole), 16)]
        assert target.new_keys(raw) == expected


@given(st.binary(min_size=16, max_size=16))
def test_a_uuid_key_is_a_version_4_uuid_of_its_bytes(raw: bytes) -> None:
    (key,) = USERS.new_keys(raw)
    made = uuid.UUID(key)
    assert made.version == 4 and made.variant == uuid.RFC_4122
    assert str(made) == key
    # Every bit but the version's and the variant's comes from ``raw``.
    mask = ~((0xF << 76) | (0x3 << 62)) & ((1 << 128) - 1)
    assert made.int & mask == int.from_bytes(raw) & mask


@given(st.integers(min_value=0, max_value=(1 << 48) - 1))
def test_a_value_is_every_columns_sample(token: int) -> None:
    for target in (USERS, MIXED):
        assert target.value(token) == {c.name: c.sample(token) for c in target.columns}
    assert USERS.value(0x1A) == {"first_name": "first_name-00000000001a",
                                 "last_name": "last_name-00000000001a"}  # fmt: skip
