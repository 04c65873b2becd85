"""The few facts about topology files that need no model: where the file is, and the bounds
the CLI states before loading one (importing this module costs nothing: no pydantic)."""

DEFAULT_TOPOLOGY = "topology.yaml"
TOPOLOGY_ENV = "SHARDCTL_TOPOLOGY"
IMAGE_ENV = "SHARDCTL_IMAGE"
"""Overrides the topology's image: how tests and offline machines use a locally built one."""
MAX_REPLICAS = 9
PORT_STRIDE = MAX_REPLICAS + 1
"""Ports per shard: the primary on the shard's port, replica i on port + i."""
