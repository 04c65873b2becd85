"""Connections to the nodes and their poolers, which failures are worth a retry, and comparing
rows across servers."""
