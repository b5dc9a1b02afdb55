"""``enclave apply`` and ``enclave apps``: app files onto a running server, and back.

``enclave apply -f PATH`` validates every app file locally first (file, line
and field for each problem) and sends nothing unless all are valid. Each app
is sent in its canonical form with its files inlined, so the server never
reads the client's disk; the server answers whether it changed, and the diff.
With more than one app, a dry run of all of them goes first, so that the
server's own checks (models, knowledge bases, secrets) refuse the lot before
anything is written.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from enclave.apps.manifest import canonical, load_app_paths
from enclave.apps.openapi import METHODS
from enclave.apps.spec import AppManifest
from enclave.cli.client import ApiClient, KeyOption, UrlOption, connect, fail
from enclave.cli.common import ConfigOption, JsonOption, output_console, plain_table

app = typer.Typer(
    help=(
        "Apps on a running server: list, show, export, history, rollback and delete. "
        "Create and change them with `enclave apply -f app.yaml`. "
        "Uses $ENCLAVE_URL and $ENCLAVE_API_KEY."
    ),
    no_args_is_help=True,
)

NameArgument = Annotated[str, typer.Argument(help="The app's name, e.g. hr-assistant.")]

# -- enclave apply -------------------------------------------------------------


def apply_command(
    files: Annotated[
        list[Path],
        typer.Option(
            "--file",
            "-f",
            help="An app file, or a folder searched for YAML files with 'kind: App' (repeatable).",
        ),
    ],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what would change; write nothing.")
    ] = False,
    test: Annotated[
        bool, typer.Option("--test", help="Run each app's tests first; apply only if all pass.")
    ] = False,
    url: UrlOption = None,
    key: KeyOption = None,
    config: ConfigOption = None,
) -> None:
    """Create or update apps from YAML files. Nothing is applied unless every file is valid.

    Examples:

      enclave apply -f hr-assistant.yaml

      enclave apply -f apps/ --dry-run

      enclave apply -f hr-assistant.yaml --test
    """
    manifests = _load_all(files)
    # Tests wait for model answers, which can take minutes on a busy CPU.
    with connect(config, url, key, timeout=300.0 if test else 60.0) as client:
        reports: dict[str, Any] = {}
        if test or (len(manifests) > 1 and not dry_run):
            # The server validates everything first (secrets it may send, addresses it may
            # reach, knowledge bases), so a spec it would refuse fails before minutes of tests.
            for manifest in manifests:
                _put(client, manifest, dry_run=True)
        if test and not _gate(client, manifests, reports):
            raise typer.Exit(1)
        for manifest in manifests:
            answer = _put(client, manifest, dry_run=dry_run)
            _report(answer, dry_run)
            if manifest.name in reports and not dry_run:
                # Kept with the version just applied: the app store shows it.
                client.call(
                    "POST", f"/api/apps/{manifest.name}/test-results", json=reports[manifest.name]
                )


def _load_all(files: list[Path]) -> list[AppManifest]:
    """Every app at the given paths, or exit 1 listing every problem."""
    loaded, problems = load_app_paths(files)
    manifests: list[AppManifest] = []
    origin: dict[str, Path] = {}
    for path, manifest in loaded:
        if manifest.name in origin:
            problems.append(f"{path}: app '{manifest.name}' is also in {origin[manifest.name]}")
            continue
        origin[manifest.name] = path
        manifests.append(manifest)
    if problems:
        for problem in problems:
            typer.secho(problem, fg="red", err=True)
        fail("nothing applied: fix the problems above")
    return manifests


def _gate(client: ApiClient, manifests: list[AppManifest], reports: dict[str, Any]) -> bool:
    """Run every app's tests once; False (after saying so) if any failed.

    Fills ``reports`` with each app's report as JSON, to record after applying.
    """
    from enclave.apps.evals.gate import run_gate  # the test runner: only for --test
    from enclave.apps.evals.report import to_json

    runs: dict[str, Any] = {}
    failed = [m.name for m in manifests if not run_gate(client, m, reports=runs)]
    reports.update({name: to_json(report) for name, report in runs.items()})
    for manifest in manifests:
        if manifest.name in failed:
            typer.secho(f"{manifest.name}: tests failed, not applied", fg="red", err=True)
        elif failed:
            typer.echo(f"{manifest.name}: not applied (another app's tests failed)", err=True)
    return not failed


def _put(client: ApiClient, manifest: AppManifest, *, dry_run: bool) -> dict[str, Any]:
    body = {"spec": canonical(manifest), "dry_run": dry_run}
    answer: dict[str, Any] = client.call("PUT", f"/api/apps/{manifest.name}", json=body)
    return answer


def _report(answer: dict[str, Any], dry_run: bool) -> None:
    name, version = answer["name"], answer["version"]
    if not answer["changed"]:
        typer.echo(f"{name}: {'no changes' if dry_run else 'unchanged'} (version {version})")
        return
    verb = "created" if answer["created"] else "configured"
    if not dry_run:
        typer.echo(f"{name}: {verb} (version {version})")
        return
    typer.echo(f"{name}: would be {verb} (version {version})")
    print_diff(answer.get("diff") or "")


def print_diff(text: str) -> None:
    """A unified diff with additions in green and removals in red."""
    for line in text.splitlines():
        if line.startswith(("+++", "---")):
            typer.secho(line, bold=True)
        elif line.startswith("+"):
            typer.secho(line, fg="green")
        elif line.startswith("-"):
            typer.secho(line, fg="red")
        elif line.startswith("@@"):
            typer.secho(line, fg="cyan")
        else:
            typer.echo(line)


# -- enclave apps ----------------------------------------------------------------


@app.command("list")
def list_(
    as_json: JsonOption = False,
    url: UrlOption = None,
    key: KeyOption = None,
    config: ConfigOption = None,
) -> None:
    """List the apps in the key's workspace.

    Example: enclave apps list
    """
    with connect(config, url, key) as client:
        data = client.call("GET", "/api/apps")["data"]
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    if not data:
        typer.echo("no apps yet (enclave apply -f app.yaml)")
        return
    table = plain_table("NAME", "VERSION", "MODEL", "UPDATED", "DESCRIPTION")
    for item in data:
        table.add_row(
            item["name"],
            str(item["version"]),
            item["model"],
            _when(item.get("updated_at")),
            item.get("description") or "",
        )
    output_console().print(table)


@app.command()
def get(
    name: NameArgument,
    as_json: JsonOption = False,
    url: UrlOption = None,
    key: KeyOption = None,
    config: ConfigOption = None,
) -> None:
    """Show an app: model, version, knowledge, APIs and tests.

    Example: enclave apps get hr-assistant
    """
    with connect(config, url, key) as client:
        answer = client.call("GET", f"/api/apps/{name}")
    if as_json:
        typer.echo(json.dumps(answer, indent=2))
        return
    document = answer["spec"]
    metadata, spec = document.get("metadata") or {}, document.get("spec") or {}
    typer.secho(f"{answer['name']} (version {answer['version']})", bold=True)
    if metadata.get("description"):
        typer.echo(f"  {metadata['description']}")
    rows = [
        ("model", spec.get("model", "default")),
        ("classification", spec.get("classification") or "(workspace floor)"),
        ("knowledge", ", ".join(spec.get("knowledge") or []) or "-"),
    ]
    apis = spec.get("apis") or []
    rows.append(("apis", "; ".join(_describe_api(api) for api in apis) or "-"))
    tests = [test["name"] for test in spec.get("tests") or []]
    rows.append(("tests", "; ".join(tests) if tests else "-"))
    rows.append(("updated", _when(answer.get("updated_at"))))
    for label, value in rows:
        typer.echo(f"  {label + ':':<16}{value}")


def _describe_api(api: dict[str, Any]) -> str:
    count = _operation_count(api)
    noun = "operation" if count == 1 else "operations"
    return f"{api['name']} ({count} {noun}, {api['url']})"


def _operation_count(api: dict[str, Any]) -> int:
    """The operations the app may call: ``operations`` if listed, else every one in the schema."""
    if api.get("operations") is not None:
        return len(api["operations"])
    paths = (api.get("schema") or {}).get("paths") or {}
    return sum(
        1
        for item in paths.values()
        if isinstance(item, dict)
        for method in item
        if method in METHODS
    )


@app.command()
def export(
    name: NameArgument,
    url: UrlOption = None,
    key: KeyOption = None,
    config: ConfigOption = None,
) -> None:
    """Print an app's canonical YAML (files inlined); applying it again changes nothing.

    Example: enclave apps export hr-assistant > hr-assistant.yaml
    """
    with connect(config, url, key) as client:
        text = client.call("GET", f"/api/apps/{name}")["yaml"]
    typer.echo(text, nl=not text.endswith("\n"))


@app.command()
def history(
    name: NameArgument,
    as_json: JsonOption = False,
    url: UrlOption = None,
    key: KeyOption = None,
    config: ConfigOption = None,
) -> None:
    """List an app's versions; '*' marks the current one.

    Example: enclave apps history hr-assistant
    """
    with connect(config, url, key) as client:
        data = client.call("GET", f"/api/apps/{name}/versions")["data"]
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    table = plain_table("VERSION", "CREATED", "BY", "SOURCE")
    for item in data:
        marker = " *" if item.get("current") else ""
        table.add_row(
            f"{item['version']}{marker}",
            _when(item.get("created_at")),
            str(item["created_by"]) if item.get("created_by") is not None else "-",
            item.get("source") or "",
        )
    output_console().print(table)


@app.command()
def rollback(
    name: NameArgument,
    to: Annotated[int, typer.Option("--to", help="The version to bring back.", min=1)],
    url: UrlOption = None,
    key: KeyOption = None,
    config: ConfigOption = None,
) -> None:
    """Make an earlier version current again (as a new version; history is kept).

    Example: enclave apps rollback hr-assistant --to 2
    """
    with connect(config, url, key) as client:
        answer = client.call("POST", f"/api/apps/{name}/rollback", json={"to": to})
    name, version = answer["name"], answer["version"]
    if answer.get("changed") is False:
        typer.echo(f"{name}: version {to} is already current (version {version})")
        return
    typer.echo(f"{name}: rolled back to version {answer.get('from', to)} (now version {version})")


@app.command()
def delete(
    name: NameArgument,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    url: UrlOption = None,
    key: KeyOption = None,
    config: ConfigOption = None,
) -> None:
    """Delete an app and all its versions.

    Example: enclave apps delete hr-assistant --yes
    """
    if not yes:
        typer.confirm(f"Delete app '{name}' and all its versions?", abort=True)
    with connect(config, url, key) as client:
        client.call("DELETE", f"/api/apps/{name}")
    typer.echo(f"deleted app '{name}'")


def _when(timestamp: str | None) -> str:
    """An ISO timestamp to the minute, for tables."""
    if not timestamp:
        return "-"
    return timestamp.replace("T", " ")[:16]
