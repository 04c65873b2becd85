"""``shardctl metrics``' usage errors, in-process: each is one line and exit 2, before any
cluster is contacted (the served metrics are tested against a real cluster and Prometheus in
tests/integration/test_monitoring.py)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from shardctl.health import defaults, scrape
from tests.unit.cli.test_cli import EXAMPLE, never_up, shardctl
from tests.unit.cli.test_startup import HEAVY, loaded


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--listen", "9560"], "give HOST:PORT"),
        (["--listen", "example.com:9560"], "is not an IP address"),
        (["--listen", "127.0.0.1:70000"], "give HOST:PORT"),
        (["--listen", "0.0.0.0:9560"], "in clear"),
        (["--listen", "127.0.0.1:9560", "--once"], "exclude each other"),
        (["--tls-cert", "cert.pem"], "go together"),
        (["--timeout", "inf"], "--timeout"),
        (["--rows-interval", "-1"], "--rows-interval"),
    ],
)
def test_bad_usage_is_one_line_and_exit_2(args: list[str], says: str) -> None:
    ran = shardctl("metrics", *args, "-f", EXAMPLE)
    assert ran.code == 2, ran.stderr
    assert says in ran.stderr and "Traceback" not in ran.stderr
    assert ran.stdout == ""


def test_a_port_in_use_is_exit_2_naming_it(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ran = shardctl("metrics", "--listen", f"127.0.0.1:{port}", "-f", never_up(tmp_path))
    assert ran.code == 2, ran.stderr
    [line] = ran.stderr.strip().splitlines()
    assert f"127.0.0.1:{port}" in line and "in use" in line


def test_the_help_states_the_scrapers_defaults_without_loading_it() -> None:
    assert scrape.TIMEOUT is defaults.TIMEOUT and scrape.ROWS_INTERVAL is defaults.ROWS_INTERVAL
    heavy = loaded("metrics", "--help")
    assert heavy & ({*HEAVY, "prometheus_client"} - {"pydantic"}) == set()
