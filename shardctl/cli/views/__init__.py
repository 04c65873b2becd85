"""What each command shows: library results as rich tables for people and as JSON-ready
data for scripts, one module per concern (cluster, data, resharding, load, replication checks,
history). Console plumbing lives in :mod:`shardctl.cli.render`."""
