"""Leaves that import nothing of shardctl's: text for people, waiting and retrying, fan-out."""
