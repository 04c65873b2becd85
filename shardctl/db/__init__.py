"""Connections to the nodes and their poolers, and which failures are worth a retry."""
