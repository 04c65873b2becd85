"""Facts about every node, judgement over them, verify-replication, distribution, the ring view."""
