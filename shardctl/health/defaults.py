"""Defaults of ``shardctl metrics``, in a module of their own so that the CLI can show them
without importing the collector (and psycopg, prometheus-client) at start-up."""

TIMEOUT = 5.0
"""Seconds a scrape may take by default, below Prometheus' default ``scrape_timeout`` (10 s)."""
ROWS_INTERVAL = 300.0
"""Seconds between two background counts of rows per shard and table, by default."""
