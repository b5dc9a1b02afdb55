"""``enclave apply --test``: run an app's tests once before applying it."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape

from enclave.apps.evals.report import Report, render_table
from enclave.apps.evals.runner import DraftError, HasHttp, run_tests
from enclave.apps.spec import AppManifest

__all__ = ["run_gate"]


def run_gate(
    client: HasHttp,
    manifest: AppManifest,
    *,
    console: Console | None = None,
    reports: dict[str, Report] | None = None,
) -> bool:
    """Run every test once, print the table; whether all passed (no tests: True).

    A draft the server refuses counts as a failure, with the server's reason.
    The report is put in ``reports`` under the app's name, when given.
    """
    console = console or Console()
    if not manifest.spec.tests:
        console.print(f"{manifest.name}: no tests")
        return True
    console.print(f"testing {manifest.name} ({len(manifest.spec.tests)} tests)…")
    try:
        report = run_tests(client, manifest)
    except DraftError as exc:
        console.print(f"[red]cannot test {manifest.name}: {escape(exc.message)}[/]")
        return False
    render_table(report, [], console)
    if reports is not None:
        reports[manifest.name] = report
    return report.passed
