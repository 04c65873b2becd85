"""TEMPORARY: the fence moved to :mod:`shardctl.fence`; these names stay until their last
importers (router.py, cluster.py, benchmarks/reshard_copy.py) import ``shardctl.fence``."""

from shardctl.fence import Moving as Moving  # TEMPORARY re-export for router.py
from shardctl.fence import ensure as ensure  # TEMPORARY re-export for cluster.py
from shardctl.fence import install as install  # TEMPORARY re-export for benchmarks
from shardctl.fence import moving_ranges as moving_ranges  # TEMPORARY re-export for router.py
