"""``shardctl monitor``: automatic failover (the pure decision in :mod:`.decide`, the loop in
:mod:`.loop`)."""
