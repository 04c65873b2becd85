"""`python -m shardctl`."""

from shardctl.cli import main

main()
