"""The ``enclave`` command. Each command group lives in its own module."""

from __future__ import annotations

import typer

from enclave import __version__
from enclave.cli import (
    app_tests,
    apps,
    audit,
    config,
    db,
    deployments,
    keys,
    knowledge,
    mcp,
    providers,
    runner,
    runners,
    serve,
    transcribe,
    usage,
)

app = typer.Typer(
    name="enclave",
    help=(
        "Enclave: a sovereign, self-hosted AI platform behind one OpenAI-compatible API.\n\n"
        "Start the server with `enclave serve`; manage API keys with `enclave keys`; "
        "ground answers in your documents with `enclave knowledge`; deploy and test "
        "YAML apps with `enclave apply` and `enclave test`."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("serve")(serve.serve)
app.command("runner")(runner.runner)
app.add_typer(keys.app, name="keys")
app.add_typer(config.app, name="config")
app.add_typer(db.app, name="db")
app.add_typer(providers.app, name="providers")
app.add_typer(audit.app, name="audit")
app.add_typer(usage.app, name="usage")
app.add_typer(knowledge.app, name="knowledge")
app.add_typer(runners.app, name="runners")
app.add_typer(deployments.app, name="deployments")
app.add_typer(mcp.app, name="mcp")
app.command("apply")(apps.apply_command)
app.add_typer(apps.app, name="apps")
app.command("test")(app_tests.test_command)
app.command("transcribe")(transcribe.transcribe)


@app.command()
def version() -> None:
    """Print the Enclave version."""
    typer.echo(__version__)


if __name__ == "__main__":
    app()
