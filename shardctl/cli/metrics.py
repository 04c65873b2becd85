"""``shardctl metrics``: Prometheus metrics from the health model of ``status``."""

from __future__ import annotations

import functools
import ipaddress
import sys
import threading
from pathlib import Path
from typing import Annotated

import typer

from shardctl.cli.app import OPERATIONS, TopologyOption, command, number_option, open_cluster
from shardctl.errors import UsageError
from shardctl.health.defaults import ROWS_INTERVAL, TIMEOUT

DEFAULT_LISTEN = "127.0.0.1:9560"


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:9560`` for IPv6) as host and port; UsageError when malformed."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--listen {text!r}: give HOST:PORT, e.g. {DEFAULT_LISTEN}")
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise UsageError(
                f"--listen {text!r}: {host!r} is not an IP address (or localhost)"
            ) from None
    return host, int(port)


@command(
    group=OPERATIONS,
    summary="Prometheus metrics from the health model status uses.",
    example="shardctl metrics --listen 127.0.0.1:9560\nshardctl metrics --once --rows",
)
def metrics(
    topology: TopologyOption = None,
    listen: Annotated[
        str | None,
        typer.Option(
            "--listen",
            metavar="HOST:PORT",
            help=f"Serve /metrics here until stopped [default: {DEFAULT_LISTEN}]; beyond "
            "loopback only with --tls-cert/--tls-key or the topology's allow_plaintext.",
            show_default=False,
        ),
    ] = None,
    once: Annotated[
        bool, typer.Option("--once", help="Print the metrics once and exit (textfile, CI).")
    ] = False,
    timeout: Annotated[
        float,
        number_option(
            "--timeout",
            low=0.5,
            high=300,
            help="Seconds a scrape may take: a node not answering by then is up 0.",
        ),
    ] = TIMEOUT,
    rows_interval: Annotated[
        float,
        number_option(
            "--rows-interval",
            low=0,
            high=86400,
            help="Seconds between two counts of rows per shard and table, in the background "
            "(0: never).",
        ),
    ] = ROWS_INTERVAL,
    rows: Annotated[
        bool, typer.Option("--rows", help="With --once: count rows per shard and table too.")
    ] = False,
    tls_cert: Annotated[
        Path | None, typer.Option("--tls-cert", help="Serve HTTPS with this certificate.")
    ] = None,
    tls_key: Annotated[
        Path | None, typer.Option("--tls-key", help="The private key of --tls-cert.")
    ] = None,
) -> None:
    """Prometheus metrics (up, role, lag, slots, ring, reshard, poolers, archiving), read on
    every scrape within --timeout. See docs/monitoring.md."""
    # Imported here, not at start-up: every other command would pay for them.
    from prometheus_client import CollectorRegistry, generate_latest, start_http_server

    from shardctl.cli import render
    from shardctl.health.archiving import RepositoryReader
    from shardctl.health.metrics import Collector
    from shardctl.health.scrape import RowsCache, Scraper, exposure_problem

    if once and listen is not None:
        raise UsageError("--once and --listen exclude each other")
    if (tls_cert is None) != (tls_key is None):
        raise UsageError("--tls-cert and --tls-key go together")
    with open_cluster(topology) as cluster:
        reader: RepositoryReader | None = None
        if cluster.topology.spec.backup is not None:  # the ages of backups and archived WAL
            from shardctl.ops.backup.listing import repository_times

            reader = functools.partial(repository_times, free=True)  # its room, every scrape
        scraper = Scraper(
            cluster.topology,
            cluster.engines,
            cluster.credentials,
            timeout=timeout,
            repository=reader,
        )
        registry = CollectorRegistry(auto_describe=False)
        registry.register(Collector(scraper))
        if once:
            if rows:
                scraper.rows = RowsCache(lambda: scraper.acting, cluster.credentials)
                scraper.rows.refresh()
            sys.stdout.write(generate_latest(registry).decode())
            return
        host, port = parse_listen(listen or DEFAULT_LISTEN)
        problem = exposure_problem(host, cluster.topology, tls=tls_cert is not None)
        if problem is not None:
            raise UsageError(problem)
        try:
            start_http_server(
                port,
                addr=host,
                registry=registry,
                certfile=str(tls_cert) if tls_cert else None,
                keyfile=str(tls_key) if tls_key else None,
            )
        except OSError as exc:
            raise UsageError(f"--listen {host}:{port}: {exc.strerror or exc}") from None
        if rows_interval > 0:  # once listening: a refused address counts nothing
            scraper.rows = RowsCache(
                lambda: scraper.acting, cluster.credentials, interval=rows_interval
            )
            scraper.rows.start()
        scheme = "https" if tls_cert else "http"
        shown = f"[{host}]" if ":" in host else host
        render.err_console.print(
            f"serving metrics of {cluster.topology.cluster} on {scheme}://{shown}:{port}/metrics"
            " (Ctrl-C stops)",
            highlight=False,
        )
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            return
