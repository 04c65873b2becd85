"""Backups and point-in-time recovery of the whole cluster (docs/backup.md)."""
