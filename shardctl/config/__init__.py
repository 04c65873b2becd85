"""The declared cluster: topology.yaml to a typed frozen model, its rules, credentials and TLS
material."""
