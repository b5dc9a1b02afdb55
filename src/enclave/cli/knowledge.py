"""``enclave knowledge``: knowledge bases on a running server (create, add, ls, rm, query)."""

from __future__ import annotations

import fnmatch
import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import Progress

from enclave.cli.client import ApiClient, KeyOption, UrlOption, connect, fail
from enclave.cli.common import (
    ConfigOption,
    JsonOption,
    output_console,
    plain_table,
    plural,
    progress_bar,
)

app = typer.Typer(
    help=(
        "Knowledge bases on a running server: create one, add files, folders and URLs, "
        "list, remove and query. Uses $ENCLAVE_URL and $ENCLAVE_API_KEY."
    ),
    no_args_is_help=True,
)

# What a folder contributes unless --include says otherwise.
DEFAULT_INCLUDE = (
    "*.pdf",
    "*.docx",
    "*.html",
    "*.htm",
    "*.md",
    "*.markdown",
    "*.txt",
    "*.csv",
    "*.json",
)
TERMINAL = ("indexed", "failed")
POLL_SECONDS = 0.5
# Without a terminal (a log, CI) a document's progress is printed as a line this often.
PROGRESS_LINE_SECONDS = 5.0


def progress_text(document: dict[str, Any]) -> str:
    """ "120/400 chunks, 35.2 chunks/s, about 8 s left" for a document being ingested."""
    done = document.get("progress") or 0
    total = document.get("progress_total")
    text = f"{done}/{plural(total, 'chunk')}" if total else plural(done, "chunk")
    if document.get("chunks_per_s"):
        text += f", {document['chunks_per_s']:.1f} chunks/s"
    if document.get("eta_s") is not None and total:
        text += f", about {_duration(document['eta_s'])} left"
    return text


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, rest = divmod(int(seconds), 60)
    return (
        f"{minutes} min {rest:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60} min"
    )


@app.command()
def create(
    name: Annotated[str, typer.Argument(help="Name of the base, e.g. hr-policies.")],
    description: Annotated[str, typer.Option(help="What the base holds.")] = "",
    classification: Annotated[
        str | None,
        typer.Option(help="Class of its documents (default: the workspace floor)."),
    ] = None,
    url: UrlOption = None,
    key: KeyOption = None,
    config: ConfigOption = None,
) -> None:
    """Create a knowledge base in the key's workspace.

    Example: enclave knowledge create hr-policies --classification internal
    """
    body = {"name": name, "description": description, "classification": classification}
    with connect(config, url, key) as client:
        base = client.call("POST", "/api/knowledge", json=body)
    typer.echo(f"created knowledge base '{base['name']}' ({base['classification']})")


def _matches(path: Path, root: Path, include: list[str], exclude: list[str]) -> bool:
    relative = path.relative_to(root).as_posix()
    if any(fnmatch.fnmatch(relative, p) or fnmatch.fnmatch(path.name, p) for p in exclude):
        return False
    return any(fnmatch.fnmatch(relative, p) or fnmatch.fnmatch(path.name, p) for p in include)


def collect(
    sources: list[str], include: list[str], exclude: list[str]
) -> Iterator[tuple[str, Path | str]]:
    """(document name, file path or URL) for every source; folders are walked recursively."""
    for source in sources:
        if source.startswith(("http://", "https://")):
            yield source, source
            continue
        path = Path(source)
        if path.is_dir():
            for found in sorted(path.rglob("*")):
                if found.is_file() and _matches(found, path, include, exclude):
                    yield f"{path.name}/{found.relative_to(path).as_posix()}", found
        elif path.is_file():
            yield path.name, path
        else:
            fail(f"{source}: no such file or folder", 2)


@app.command()
def add(
    knowledge_base: Annotated[str, typer.Argument(help="The base to add to.")],
    sources: Annotated[
        list[str], typer.Argument(help="Files, folders (recursive) and http(s) URLs.")
    ],
    include: Annotated[
        list[str] | None,
        typer.Option(
            "--include",
            "-i",
            help="Glob of files to take from folders (repeatable; default: every supported type).",
        ),
    ] = None,
    exclude: Annotated[
        list[str] | None,
        typer.Option("--exclude", "-x", help="Glob of files to skip (repeatable)."),
    ] = None,
    classification: Annotated[
        str | None, typer.Option(help="Raise these documents' class above the base's.")
    ] = None,
    metadata: Annotated[
        str | None, typer.Option(help='JSON metadata for filters, e.g. \'{"dept": "hr"}\'.')
    ] = None,
    groups: Annotated[
        str | None,
        typer.Option(
            help=(
                "Only members of these groups may read the documents (comma-separated, "
                "e.g. hr-partners,payroll; a builder or admin). '' makes them readable by everyone."
            )
        ),
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait/--no-wait", help="Follow ingestion until every document ends.")
    ] = True,
    url: UrlOption = None,
    key: KeyOption = None,
    config: ConfigOption = None,
) -> None:
    """Upload documents and follow their ingestion, then print a summary.

    Examples:

      enclave knowledge add hr-policies ./docs --include '*.pdf' --include '*.md'

      enclave knowledge add hr-policies handbook.docx https://intranet.example/leave.html

      enclave knowledge add hr-policies salaries-2026.pdf --groups hr-partners

    The exit status is 1 if any document failed.
    """
    if metadata is not None:
        try:
            if not isinstance(json.loads(metadata), dict):
                raise ValueError
        except ValueError:
            fail("--metadata must be a JSON object", 2)
    items = list(collect(sources, include or list(DEFAULT_INCLUDE), exclude or []))
    if not items:
        fail("nothing to add: no file matched", 2)
    console = Console(stderr=True)
    outcomes: dict[str, dict[str, Any]] = {}
    with connect(config, url, key) as client, progress_bar(console, transient=False) as progress:
        task = progress.add_task("uploading", total=len(items))
        for name, source in items:
            progress.update(task, description=f"uploading {name}")
            outcomes[name] = _upload(
                client, knowledge_base, name, source, classification, metadata, groups
            )
            document = outcomes[name]
            if document["outcome"] == "unchanged":
                progress.console.print(f"  [dim]unchanged[/]  {name}")
            progress.advance(task)
        if wait:
            _follow(client, knowledge_base, outcomes, progress)
    _summary(console, outcomes, wait)
    if any(d["document"]["status"] == "failed" for d in outcomes.values()):
        raise typer.Exit(1)


def _upload(
    client: ApiClient,
    knowledge_base: str,
    name: str,
    source: Path | str,
    classification: str | None,
    metadata: str | None,
    groups: str | None = None,
) -> dict[str, Any]:
    path = f"/api/knowledge/{knowledge_base}/documents"
    if isinstance(source, str):
        body: dict[str, Any] = {"url": source, "classification": classification}
        if metadata:
            body["metadata"] = json.loads(metadata)
        if groups is not None:
            body["groups"] = [group for group in groups.split(",") if group.strip()]
        answer = client.call("POST", path, json=body)
    else:
        fields = {"classification": classification or "", "metadata": metadata or ""}
        if groups is not None:  # present but empty: readable by everyone again
            fields["groups"] = groups
        with source.open("rb") as handle:
            answer = client.call("POST", path, files={"file": (name, handle)}, data=fields)
    result: dict[str, Any] = answer["data"][0]
    return result


def _follow(
    client: ApiClient,
    knowledge_base: str,
    outcomes: dict[str, dict[str, Any]],
    progress: Progress,
) -> None:
    pending = {
        name: outcome["document"]["id"]
        for name, outcome in outcomes.items()
        if outcome["outcome"] == "queued"
    }
    task = progress.add_task("ingesting", total=len(pending))
    lines = not progress.console.is_terminal
    next_line = time.monotonic() + PROGRESS_LINE_SECONDS
    while pending:
        for name, document_id in list(pending.items()):
            document = client.call(
                "GET", f"/api/knowledge/{knowledge_base}/documents/{document_id}"
            )
            outcomes[name]["document"] = document
            status = document["status"]
            if status in TERMINAL:
                del pending[name]
                progress.advance(task)
                if status == "failed":
                    progress.console.print(f"  [red]failed[/]     {name}: {document['reason']}")
                else:
                    chunks = plural(document["chunks"], "chunk")
                    progress.console.print(f"  [green]indexed[/]    {name} ({chunks})")
            else:
                text = f"{status} {name} ({progress_text(document)})"
                progress.update(task, description=text)
                if lines and time.monotonic() >= next_line:
                    progress.console.print(f"  {text}")
                    next_line = time.monotonic() + PROGRESS_LINE_SECONDS
        if pending:
            time.sleep(POLL_SECONDS)
    progress.update(task, description="ingested")


def _summary(console: Console, outcomes: dict[str, dict[str, Any]], waited: bool) -> None:
    counts: Counter[str] = Counter()
    chunks = 0
    for outcome in outcomes.values():
        if outcome["outcome"] == "unchanged":
            counts["unchanged"] += 1
        else:
            counts[outcome["document"]["status"]] += 1
            chunks += outcome["document"].get("chunks") or 0
    order = ("indexed", "unchanged", "failed", "queued", "extracting", "embedding")
    parts = [f"{counts[state]} {state}" for state in order if counts[state]]
    tail = (
        f", {plural(chunks, 'chunk')}" if waited else " (not waiting; see `enclave knowledge ls`)"
    )
    console.print(f"{plural(len(outcomes), 'document')}: {', '.join(parts)}{tail}")


@app.command("ls")
def list_(
    knowledge_base: Annotated[
        str | None, typer.Argument(help="List this base's documents (default: list the bases).")
    ] = None,
    as_json: JsonOption = False,
    url: UrlOption = None,
    key: KeyOption = None,
    config: ConfigOption = None,
) -> None:
    """List knowledge bases, or one base's documents with their status.

    Example: enclave knowledge ls hr-policies
    """
    with connect(config, url, key) as client:
        path = "/api/knowledge" + (f"/{knowledge_base}/documents" if knowledge_base else "")
        data = client.call("GET", path)["data"]
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    # Piped output is not cut to 80 columns: scripts and tests read whole names.
    console = output_console()
    if knowledge_base is None:
        table = plain_table("NAME", "CLASS", "DOCUMENTS", "CHUNKS", "DESCRIPTION")
        for base in data:
            table.add_row(
                base["name"],
                base["classification"],
                str(base["documents"]),
                str(base["chunks"])
                + (
                    f" (+{base['chunks_ingesting']} ingesting)"
                    if base.get("chunks_ingesting")
                    else ""
                ),
                base["description"],
            )
    else:
        table = plain_table("ID", "NAME", "STATUS", "CHUNKS", "PAGES", "CLASS", "GROUPS", "REASON")
        for document in data:
            running = document["status"] not in TERMINAL
            table.add_row(
                str(document["id"]),
                document["name"],
                document["status"],
                # While a job runs, its progress: the stored count is the last finished run's.
                progress_text(document) if running else str(document["chunks"]),
                str(document["pages"] or ""),
                document["classification"],
                ",".join(document.get("groups") or []),
                document["reason"] or "",
            )
    console.print(table)


@app.command()
def rm(
    knowledge_base: Annotated[str, typer.Argument(help="The base.")],
    documents: Annotated[
        list[str] | None,
        typer.Argument(help="Documents to remove, by name or id (default: the whole base)."),
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    url: UrlOption = None,
    key: KeyOption = None,
    config: ConfigOption = None,
) -> None:
    """Remove documents, or a whole knowledge base with everything in it.

    Example: enclave knowledge rm hr-policies old/handbook-2019.pdf
    """
    with connect(config, url, key) as client:
        if not documents:
            if not yes:
                typer.confirm(
                    f"Delete knowledge base '{knowledge_base}' and all its documents?", abort=True
                )
            client.call("DELETE", f"/api/knowledge/{knowledge_base}")
            typer.echo(f"deleted knowledge base '{knowledge_base}'")
            return
        listed = client.call("GET", f"/api/knowledge/{knowledge_base}/documents")["data"]
        by_name = {d["name"]: d["id"] for d in listed} | {str(d["id"]): d["id"] for d in listed}
        missing = [d for d in documents if d not in by_name]
        if missing:
            fail(f"not in '{knowledge_base}': {', '.join(missing)}", 2)
        for document in documents:
            document_id = by_name[document]
            client.call("DELETE", f"/api/knowledge/{knowledge_base}/documents/{document_id}")
            typer.echo(f"deleted {document}")


@app.command()
def query(
    knowledge_base: Annotated[str, typer.Argument(help="The base to search.")],
    text: Annotated[str, typer.Argument(help="What to search for.")],
    top_k: Annotated[int, typer.Option("--top-k", "-k", help="Passages to return.")] = 5,
    mode: Annotated[str, typer.Option(help="hybrid, bm25 or dense.")] = "hybrid",
    threshold: Annotated[
        float | None, typer.Option(help="Minimum cosine similarity (default: the server's).")
    ] = None,
    as_json: JsonOption = False,
    url: UrlOption = None,
    key: KeyOption = None,
    config: ConfigOption = None,
) -> None:
    """Search a base: passages with their scores and where they come from.

    Example: enclave knowledge query hr-policies "How many days of parental leave?"
    """
    if mode not in ("hybrid", "bm25", "dense"):
        fail("--mode must be hybrid, bm25 or dense", 2)
    body = {"query": text, "top_k": top_k, "mode": mode, "threshold": threshold}
    with connect(config, url, key) as client:
        answer = client.call("POST", f"/api/knowledge/{knowledge_base}/query", json=body)
    if as_json:
        typer.echo(json.dumps(answer, indent=2))
        return
    if not answer["data"]:
        typer.echo(f"nothing above the threshold ({answer['threshold']})")
        return
    for rank, passage in enumerate(answer["data"], start=1):
        where = passage["document"]["name"]
        location = passage["location"]
        if location["page_start"]:
            where += f", page {location['page_start']}"
        if location["heading_path"]:
            where += f", {' > '.join(location['heading_path'])}"
        ranks = passage["ranks"]
        typer.secho(
            f"[{rank}] {where}  (similarity {passage['similarity']:.3f}, "
            f"bm25 #{ranks['bm25'] or '-'}, dense #{ranks['dense'] or '-'})",
            bold=True,
        )
        typer.echo("    " + passage["text"].strip().replace("\n", "\n    ")[:600])
