"""``verify-replication``: the checks as tables, JSON and JUnit XML."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from typing import Any

from rich import box
from rich.table import Table

from shardctl.cli.render import escape
from shardctl.health.checks import Check
from shardctl.health.verify import Report
from shardctl.util.text import first_line

_RESULT_STYLE = {"pass": "[green]pass[/]", "fail": "[bold red]FAIL[/]", "skip": "[dim]skip[/]"}


def checks_summary_table(report: Report) -> Table:
    """The 80-column ``verify-replication`` table: a row per node, its checks counted, the
    names of those that failed (each failure is printed in full under the table)."""
    table = Table(
        title=f"cluster {report.cluster}: {verify_summary(report)}",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    table.add_column("shard", no_wrap=True)
    table.add_column("node", no_wrap=True)
    table.add_column("passed", justify="right", no_wrap=True)
    table.add_column("result")
    nodes: dict[str, list[Check]] = {}
    for check in report.checks:
        nodes.setdefault(check.node, []).append(check)
    shard = None
    for node, checks in nodes.items():
        failed = [c.check for c in checks if not c.ok]
        skipped = sum(c.skipped for c in checks)
        if failed:
            result = f"[bold red]FAIL[/] {escape(', '.join(failed))}"
        else:
            result = "[green]ok[/]" + (f" [dim]({skipped} skipped)[/]" if skipped else "")
        passed = sum(c.ok and not c.skipped for c in checks)
        cells = (checks[0].shard if checks[0].shard != shard else "", node)
        table.add_row(*cells, f"{passed}/{len(checks)}", result)
        shard = checks[0].shard
    return table


def checks_table(report: Report) -> Table:
    """The ``verify-replication`` table: node, check, result, detail; one section per shard."""
    table = Table(title=f"cluster {report.cluster}: {verify_summary(report)}", title_justify="left")
    for column in ("node", "check", "result", "detail"):
        table.add_column(column)
    shard: str | None = None
    for check in report.checks:
        if shard is not None and check.shard != shard:
            table.add_section()
        shard = check.shard
        detail = escape(check.detail)
        table.add_row(
            check.node,
            check.check,
            _RESULT_STYLE[check.result],
            f"[dim]{detail}[/]" if check.skipped else detail,
        )
    return table


def verify_summary(report: Report) -> str:
    """One line: how many checks passed, failed and were skipped, and how long it took."""
    failed = len(report.failures)
    skipped = sum(c.skipped for c in report.checks)
    total = len(report.checks)
    head = (
        f"{total - failed - skipped} of {total} checks passed"
        if failed
        else (f"all {total - skipped} checks passed")
    )
    parts = [head]
    if failed:
        parts.append(f"{failed} failed")
    if skipped:
        parts.append(f"{skipped} skipped")
    return f"{', '.join(parts)} in {report.seconds:.2f} s"


def check_facts(check: Check) -> dict[str, Any]:
    """One check as JSON data."""
    return {
        "shard": check.shard,
        "node": check.node,
        "check": check.check,
        "ok": check.ok,
        "result": check.result,
        "detail": check.detail,
        "seconds": None if check.seconds is None else round(check.seconds, 4),
    }


def verify_facts(report: Report) -> dict[str, Any]:
    """The ``verify-replication -o json`` document."""
    return {
        "ok": report.ok,
        "cluster": report.cluster,
        "seconds": round(report.seconds, 3),
        "deep": report.deep,
        "limits": report.limits.as_data(),
        "checks": [check_facts(c) for c in report.checks],
    }


def junit_xml(report: Report) -> bytes:
    """A JUnit XML report: a suite per shard, a test case per check, failures with the detail."""
    root = ET.Element("testsuites", name=f"shardctl verify-replication {report.cluster}")
    suites: dict[str, list[Check]] = {}
    for check in report.checks:
        suites.setdefault(check.shard, []).append(check)
    stamp = datetime.now(UTC).replace(microsecond=0).isoformat()
    for shard, checks in suites.items():
        suite = ET.SubElement(
            root,
            "testsuite",
            name=f"{report.cluster}.{shard}",
            tests=str(len(checks)),
            failures=str(sum(not c.ok for c in checks)),
            errors="0",
            skipped=str(sum(c.skipped for c in checks)),
            time=f"{sum(c.seconds or 0.0 for c in checks):.3f}",
            timestamp=stamp,
        )
        for check in checks:
            case = ET.SubElement(
                suite,
                "testcase",
                classname=shard,
                name=f"{check.node}: {check.check}",
                time=f"{check.seconds or 0.0:.3f}",
            )
            if check.skipped:
                ET.SubElement(case, "skipped", message=check.detail)
            elif not check.ok:
                failure = ET.SubElement(case, "failure", message=check.detail, type=check.check)
                failure.text = check.line
    _totals(root)
    root.set("time", f"{report.seconds:.3f}")  # wall time; checks ran in parallel
    return _xml_bytes(root)


def junit_error(cluster: str, message: str) -> bytes:
    """A JUnit XML report of one failed test case: the cluster could not be checked at all."""
    root = ET.Element("testsuites", name=f"shardctl verify-replication {cluster}")
    suite = ET.SubElement(root, "testsuite", name=cluster, tests="1", failures="0", errors="1")
    case = ET.SubElement(suite, "testcase", classname=cluster, name="verify-replication")
    error = ET.SubElement(case, "error", message=first_line(message), type="unreachable")
    error.text = message
    _totals(root)
    return _xml_bytes(root)


def _totals(root: ET.Element) -> None:
    for field in ("tests", "failures", "errors", "skipped"):
        root.set(field, str(sum(int(s.get(field, "0")) for s in root)))
    root.set("time", f"{sum(float(s.get('time', '0')) for s in root):.3f}")


def _xml_bytes(root: ET.Element) -> bytes:
    ET.indent(root)
    return bytes(ET.tostring(root, encoding="utf-8", xml_declaration=True)) + b"\n"
