"""Every advisory-lock key shardctl takes, in one place so that no two features collide.

Transaction locks (:data:`XACT_LOCK`) serialise installers of the shared ``shardctl`` schema;
session locks (:data:`TRY_SESSION_LOCK`) mark who is at work, and go with their connection, so
a killed holder never blocks the run that follows it.
"""

from __future__ import annotations

CATALOG_INSTALL_LOCK = 0x5C_A7A1_06
"""``pg_advisory_xact_lock``: one installer of the ring catalog at a time per database."""
FENCE_INSTALL_LOCK = 0x5C_A7A1_07
"""``pg_advisory_xact_lock``: one installer of the protocol's schema at a time per database."""
COORDINATOR_LOCK = 0x5C_A7A1_08
"""Session ``pg_try_advisory_lock`` on the first primary: one reshard coordinator at a time."""
ROLE_CHANGE_LOCK = 0x5C_A7A1_09
"""Session ``pg_try_advisory_lock`` on a shard's primary, held by a switchover from before it
fences the primary until the primary is stopped: ``up`` lifts only a fence nobody holds."""
MONITOR_LOCK = 0x5C_A7A1_0A
"""Session ``pg_try_advisory_lock(MONITOR_LOCK, <shard's number>)`` on every replica of a
shard (and on its acting primary while a former primary is re-joined), held by
``shardctl monitor``: one monitor at a time fails a shard over or re-joins its node."""

# (a session lock: COORDINATOR_LOCK or ROLE_CHANGE_LOCK)
TRY_SESSION_LOCK = "SELECT pg_catalog.pg_try_advisory_lock(%s)"
RELEASE_SESSION_LOCK = "SELECT pg_catalog.pg_advisory_unlock(%s)"
# (an install lock: CATALOG_INSTALL_LOCK or FENCE_INSTALL_LOCK)
XACT_LOCK = "SELECT pg_catalog.pg_advisory_xact_lock(%s)"

ROLE_CHANGE = 0
"""The operation id (``shardctl.moving.reshard_id``) of a role change's fence
(:mod:`shardctl.state.fence`); reshards count from 1. Here, so that what only reads the
catalog (status) need not import the fence."""
