"""Facts about every node, judgement over them, verify-replication and distribution."""
