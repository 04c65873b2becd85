"""The few facts about topology files that need no model: where the file is, and the bounds
the CLI states before loading one (importing this module costs nothing: no pydantic)."""

DEFAULT_TOPOLOGY = "topology.yaml"
TOPOLOGY_ENV = "SHARDCTL_TOPOLOGY"
IMAGE_ENV = "SHARDCTL_IMAGE"
"""Overrides the topology's image: how tests and offline machines use a locally built one."""
BACKUP_SLOT = "shardctl_backup"
"""The physical replication slot the backup node streams each acting primary's WAL through
(:mod:`shardctl.docker.backup_specs`; here, so that status's checks need not import the specs)."""
SEGMENT_BYTES = 16 * 1024 * 1024
"""PostgreSQL's default WAL segment size (the servers shardctl makes keep it)."""
MAX_REPLICAS = 9
PORT_STRIDE = MAX_REPLICAS + 1
"""Ports per shard: the primary on the shard's port, replica i on port + i."""
