"""Test results: pass rates, JSON and JUnit files, baselines and the table.

A test runs ``repeat`` times (models are not perfectly deterministic even at
temperature 0 across hardware), so a result is a pass *rate*: the test passes
when the rate reaches ``min_pass_rate`` (1.0 by default: every run).

The JSON file is also the baseline format. :func:`compare` reads an earlier
one and names regressions: a test whose pass rate dropped, or one that passed
and now fails. Tests are matched by app and name; tests the baseline does not
know are new, and tests it knows but this run skipped are not compared.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

from rich.console import Console
from rich.markup import escape
from rich.table import Table

__all__ = [
    "REPORT_FORMAT",
    "BaselineError",
    "Regression",
    "Report",
    "TestResult",
    "compare",
    "merge",
    "read_baseline",
    "render_table",
    "to_json",
    "write_json",
    "write_junit",
]

REPORT_FORMAT = "enclave-test/1"
_EPSILON = 1e-9


@dataclass(slots=True)
class TestResult:
    """One test over all its runs. ``failures`` come from failing runs, with run and step."""

    __test__: ClassVar[bool] = False  # not a pytest class, despite the name

    app: str
    name: str
    runs: int = 0
    passed: int = 0
    failures: list[str] = field(default_factory=list)
    duration_s: float = 0.0
    min_pass_rate: float = 1.0

    @property
    def pass_rate(self) -> float:
        return self.passed / self.runs if self.runs else 0.0

    @property
    def status(self) -> str:
        """``passed`` when the pass rate reaches ``min_pass_rate``, else ``failed``."""
        ok = self.runs > 0 and self.pass_rate + _EPSILON >= self.min_pass_rate
        return "passed" if ok else "failed"


@dataclass(slots=True)
class Report:
    """Every test result of one ``enclave test`` invocation (one or more apps)."""

    results: list[TestResult] = field(default_factory=list)
    duration_s: float = 0.0
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def failed(self) -> list[TestResult]:
        return [result for result in self.results if result.status == "failed"]

    @property
    def passed(self) -> bool:
        """Whether every test passed (true for no tests)."""
        return not self.failed


@dataclass(frozen=True, slots=True)
class Regression:
    """A test that did better in the baseline."""

    app: str
    name: str
    reason: str

    def __str__(self) -> str:
        return f"{self.app}: {self.name}: {self.reason}"


class BaselineError(ValueError):
    """The baseline file is not a report written by ``enclave test --json``."""


def merge(reports: list[Report]) -> Report:
    """One report holding the results of several (one per app)."""
    results = [result for report in reports for result in report.results]
    created = min((report.created_at for report in reports), default=datetime.now(UTC))
    return Report(results, sum(report.duration_s for report in reports), created)


def _percent(rate: float) -> str:
    return f"{rate * 100:.0f}%"


def to_json(report: Report) -> dict[str, Any]:
    """The report as JSON-ready data; also what :func:`compare` reads as a baseline."""
    return {
        "format": REPORT_FORMAT,
        "created_at": report.created_at.isoformat(),
        "duration_s": round(report.duration_s, 3),
        "summary": {
            "tests": len(report.results),
            "passed": len(report.results) - len(report.failed),
            "failed": len(report.failed),
        },
        "tests": [
            {
                "app": result.app,
                "name": result.name,
                "runs": result.runs,
                "passed": result.passed,
                "pass_rate": round(result.pass_rate, 4),
                "min_pass_rate": result.min_pass_rate,
                "status": result.status,
                "failures": result.failures,
                "duration_s": round(result.duration_s, 3),
            }
            for result in report.results
        ],
    }


def write_json(report: Report, path: Path) -> None:
    """Write :func:`to_json` to ``path``."""
    path.write_text(json.dumps(to_json(report), indent=2, ensure_ascii=False) + "\n")


def write_junit(report: Report, path: Path) -> None:
    """Write JUnit XML: one ``<testsuite>`` per app, one ``<testcase>`` per test."""
    root = ET.Element(
        "testsuites",
        name="enclave test",
        tests=str(len(report.results)),
        failures=str(len(report.failed)),
        errors="0",
        time=f"{report.duration_s:.3f}",
    )
    apps: dict[str, list[TestResult]] = {}
    for result in report.results:
        apps.setdefault(result.app, []).append(result)
    for app, results in apps.items():
        failed = [result for result in results if result.status == "failed"]
        suite = ET.SubElement(
            root,
            "testsuite",
            name=app,
            tests=str(len(results)),
            failures=str(len(failed)),
            errors="0",
            skipped="0",
            time=f"{sum(result.duration_s for result in results):.3f}",
            timestamp=report.created_at.replace(microsecond=0, tzinfo=None).isoformat(),
        )
        for result in results:
            case = ET.SubElement(
                suite,
                "testcase",
                classname=app,
                name=result.name,
                time=f"{result.duration_s:.3f}",
            )
            rate = f"passed {result.passed}/{result.runs} runs ({_percent(result.pass_rate)})"
            if result.status == "failed":
                first = result.failures[0] if result.failures else "no runs"
                failure = ET.SubElement(
                    case,
                    "failure",
                    message=f"{rate}, below {_percent(result.min_pass_rate)}: {first}",
                    type="AssertionError",
                )
                failure.text = "\n".join(result.failures)
            ET.SubElement(case, "system-out").text = rate
    tree = ET.ElementTree(root)
    ET.indent(tree)
    tree.write(path, encoding="utf-8", xml_declaration=True)


def _baseline_tests(baseline: Any) -> dict[tuple[str, str], dict[str, Any]]:
    if not isinstance(baseline, dict) or not isinstance(baseline.get("tests"), list):
        raise BaselineError("not an `enclave test --json` report: no 'tests' list")
    tests = {}
    for index, test in enumerate(baseline["tests"]):
        try:
            key = (str(test["app"]), str(test["name"]))
            tests[key] = {"pass_rate": float(test["pass_rate"]), "status": str(test["status"])}
        except (TypeError, KeyError, ValueError) as exc:
            raise BaselineError(
                f"tests[{index}] lacks app, name, pass_rate or status: {exc}"
            ) from None
    return tests


def read_baseline(path: Path) -> dict[str, Any]:
    """An earlier JSON report, checked enough for :func:`compare`; raises :class:`BaselineError`."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise BaselineError(f"cannot read {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise BaselineError(f"{path} is not JSON: {exc}") from None
    _baseline_tests(data)
    return dict(data)


def compare(report: Report, baseline: Any) -> list[Regression]:
    """Tests that did worse than in ``baseline`` (the data of an earlier JSON report)."""
    known = _baseline_tests(baseline)
    regressions = []
    for result in report.results:
        before = known.get((result.app, result.name))
        if before is None:
            continue
        rate = before["pass_rate"]
        if result.pass_rate + _EPSILON < rate:
            reason = f"pass rate {_percent(rate)} → {_percent(result.pass_rate)}"
        elif before["status"] == "passed" and result.status == "failed":
            reason = "passed in the baseline, fails now"
        else:
            continue
        regressions.append(Regression(result.app, result.name, reason))
    return regressions


def render_table(report: Report, regressions: list[Regression], console: Console) -> None:
    """Print each test's pass rate, status and first failure, then a summary line."""
    regressed = {(regression.app, regression.name) for regression in regressions}
    several_apps = len({result.app for result in report.results}) > 1
    table = Table(box=None)
    table.add_column("TEST", overflow="fold")
    table.add_column("PASS RATE", justify="right", no_wrap=True)
    table.add_column("STATUS", no_wrap=True)
    table.add_column("FIRST FAILURE", overflow="fold")
    for result in report.results:
        name = f"{result.app}: {result.name}" if several_apps else result.name
        if (result.app, result.name) in regressed:
            status = "[bold red]REGRESSED[/]"
        elif result.status == "passed":
            status = "[green]pass[/]"
        else:
            status = "[bold red]FAIL[/]"
        first = result.failures[0] if result.failures else ""
        rate = f"{result.passed}/{result.runs} {_percent(result.pass_rate)}"
        table.add_row(escape(name), rate, status, escape(first))
    console.print(table)
    failed = len(report.failed)
    summary = f"{len(report.results)} tests: {len(report.results) - failed} passed, {failed} failed"
    if regressions:
        summary += f", {len(regressions)} regressed"
    colour = "red" if failed or regressions else "green"
    console.print(f"[{colour}]{summary}[/] in {report.duration_s:.1f}s")
