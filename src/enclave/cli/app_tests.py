"""``enclave test``: run apps' tests against a running server, with canned API responses.

Exit status: 0 when every test passed, 1 when a test failed, regressed against
``--baseline`` or could not be run, 2 for usage errors (a bad app file, a
baseline that is not a report, an ``--only`` name no app has, an app the
server rejects as invalid).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from enclave.apps.evals.report import (
    BaselineError,
    Regression,
    Report,
    compare,
    merge,
    read_baseline,
    render_table,
    write_json,
    write_junit,
)
from enclave.apps.evals.runner import DraftError, run_tests
from enclave.apps.manifest import load_app_paths
from enclave.apps.spec import AppManifest, AppTest
from enclave.cli.client import ApiClient, KeyOption, UrlOption, connect, fail
from enclave.cli.common import ConfigOption, output_console, progress_bar

# A test's steps wait on a model that may call APIs; allow slow CPU models.
REQUEST_TIMEOUT_S = 300.0


def _load_apps(paths: list[Path]) -> list[tuple[Path, AppManifest]]:
    """Every app file under ``paths``; prints each bad file's problems and exits 2."""
    apps, problems = load_app_paths(paths)
    for problem in problems:
        typer.secho(f"error: {problem}", fg="red", err=True)
    if problems:
        raise typer.Exit(2)
    return apps


def _print_regressions(console: Console, regressions: list[Regression], baseline: Path) -> None:
    console.print(f"[bold red]{len(regressions)} regressed against {escape(str(baseline))}:[/]")
    for regression in regressions:
        console.print(f"  [red]{escape(str(regression))}[/]")


def test_command(
    files: Annotated[
        list[Path],
        typer.Option(
            "--file",
            "-f",
            help="An app file, or a folder of them (repeatable).",
            show_default=False,
        ),
    ],
    repeat: Annotated[
        int, typer.Option("--repeat", "-n", min=1, help="Runs per test; reports a pass rate.")
    ] = 1,
    judge_model: Annotated[
        str, typer.Option("--judge-model", help="Model that grades `judge:` rubrics.")
    ] = "default",
    junit: Annotated[
        Path | None, typer.Option("--junit", help="Write JUnit XML here.", show_default=False)
    ] = None,
    json_path: Annotated[
        Path | None,
        typer.Option(
            "--json", help="Write a JSON report here (a later --baseline).", show_default=False
        ),
    ] = None,
    baseline: Annotated[
        Path | None,
        typer.Option(
            "--baseline",
            help="An earlier --json report: fail on tests whose pass rate dropped.",
            show_default=False,
        ),
    ] = None,
    only: Annotated[
        list[str] | None,
        typer.Option("--only", help="Run only this test (repeatable).", show_default=False),
    ] = None,
    min_pass_rate: Annotated[
        float,
        typer.Option(
            "--min-pass-rate",
            min=0.0,
            max=1.0,
            help="A test passes when this share of its runs passed.",
        ),
    ] = 1.0,
    fixture_host: Annotated[
        str,
        typer.Option(
            "--fixture-host",
            help="Address for the local fixture server; the server under test must reach it.",
        ),
    ] = "127.0.0.1",
    url: UrlOption = None,
    key: KeyOption = None,
    config: ConfigOption = None,
) -> None:
    """Run apps' tests on a running server; every API answers from the tests' fixtures.

    Each run of a test talks to a temporary draft of the app whose APIs point at
    a local fixture server, so no real system is called and no credential sent.

    Examples:

      enclave test -f hr-assistant.yaml

      enclave test -f apps/ --repeat 5 --min-pass-rate 0.8 --junit results.xml

      enclave test -f app.yaml --json now.json --baseline last.json

    The exit status is 1 if a test failed or regressed, 2 for usage errors.
    """
    apps = _load_apps(files)
    if only:
        names = {test.name for _, manifest in apps for test in manifest.spec.tests}
        missing = [name for name in only if name not in names]
        if missing:
            fail(f"no test named {', '.join(repr(name) for name in missing)}", 2)
    previous = None
    if baseline is not None:
        try:
            previous = read_baseline(baseline)
        except BaselineError as exc:
            fail(f"--baseline: {exc}", 2)
    selected = [
        (manifest, [t for t in manifest.spec.tests if not only or t.name in only])
        for _, manifest in apps
    ]
    total_runs = sum(len(tests) for _, tests in selected) * repeat
    reports: list[Report] = []
    problems: list[tuple[str, DraftError]] = []
    if total_runs == 0:
        typer.echo("no tests to run", err=True)
    else:
        with connect(config, url, key, timeout=REQUEST_TIMEOUT_S) as client:
            options = RunOptions(repeat, judge_model, fixture_host, only or None, min_pass_rate)
            reports, problems = _run_all(client, selected, options, total_runs)
    out = output_console()
    report = merge(reports)
    regressions = compare(report, previous) if previous is not None else []
    if report.results:
        render_table(report, regressions, out)
    if regressions and baseline is not None:
        _print_regressions(out, regressions, baseline)
    if json_path is not None:
        write_json(report, json_path)
    if junit is not None:
        write_junit(report, junit)
    for name, problem in problems:
        typer.secho(f"error: cannot test {name}: {problem.message}", fg="red", err=True)
    if any(problem.status == 400 for _, problem in problems):
        raise typer.Exit(2)
    if problems or not report.passed or regressions:
        raise typer.Exit(1)


@dataclass(frozen=True, slots=True)
class RunOptions:
    """The options every app's run shares."""

    repeat: int
    judge_model: str
    fixture_host: str
    only: list[str] | None
    min_pass_rate: float


def _run_all(
    client: ApiClient,
    selected: list[tuple[AppManifest, list[AppTest]]],
    options: RunOptions,
    total_runs: int,
) -> tuple[list[Report], list[tuple[str, DraftError]]]:
    """Each app's report, and the apps whose draft the server refused.

    Progress goes to stderr: a bar on a terminal, else one line per run (CI logs).
    """
    reports: list[Report] = []
    problems: list[tuple[str, DraftError]] = []
    err = Console(stderr=True)
    with progress_bar(err, transient=True, only_on_terminal=True) as progress:
        task = progress.add_task("testing", total=total_runs)
        started = 0
        for manifest, tests in selected:
            if not tests:
                continue

            def show(test: str, run: int, runs: int, app: str = manifest.name) -> None:
                nonlocal started
                description = f"{app}: {test} (run {run}/{runs})"
                progress.update(task, description=escape(description), completed=started)
                if not err.is_terminal:
                    err.print(description, markup=False, highlight=False)
                started += 1

            try:
                report = run_tests(
                    client,
                    manifest,
                    repeat=options.repeat,
                    judge_model=options.judge_model,
                    fixture_host=options.fixture_host,
                    only=options.only,
                    progress=show,
                    min_pass_rate=options.min_pass_rate,
                )
            except DraftError as exc:
                problems.append((manifest.name, exc))
                continue
            except OSError as exc:  # the fixture server cannot bind --fixture-host
                fail(f"--fixture-host {options.fixture_host}: {exc}", 2)
            reports.append(report)
        progress.update(task, description="done", completed=total_runs)
    return reports, problems
