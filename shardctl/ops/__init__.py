"""What changes the cluster: up/down, role changes, resharding."""
