"""What lives inside the cluster: DDL, the catalog, the fence, operations in flight."""
