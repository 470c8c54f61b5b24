"""Running the package (worker, gateway, dev stack), checking it (health), and setting it up
(API keys, database schemas)."""

from __future__ import annotations

import typer
from rich.table import Table

from nexpo_workflows.cli._common import (
    app,
    command_settings,
    configured_settings,
    out,
    require_temporal,
    run_async,
)
from nexpo_workflows.client import connect
from nexpo_workflows.health.models import DependencyState, HealthReport
from nexpo_workflows.services import Services
from nexpo_workflows.telemetry import create_runtime

db_app = typer.Typer(help="Database schema.", no_args_is_help=True)


app.add_typer(db_app, name="db")


@app.command()
def worker() -> None:
    """Run a worker on TEMPORAL_TASK_QUEUE until SIGINT/SIGTERM (run several to scale out)."""
    from nexpo_workflows.worker import serve

    settings = command_settings()
    require_temporal(settings, "worker")
    run_async(serve(settings))


@app.command()
def api() -> None:
    """Serve the HTTP gateway on API_HOST:API_PORT."""
    from nexpo_workflows.api.serve import serve_api

    run_async(serve_api(command_settings()))


@app.command()
def dev() -> None:
    """Embedded Temporal dev server with its Web UI, a worker and the gateway, in one command."""
    from nexpo_workflows.dev import run_dev_stack

    run_async(run_dev_stack(configured_settings()))


@app.command()
def health(
    json_output: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Check every enabled dependency; exit 1 when one is down."""
    from nexpo_workflows.health.run import run_health_check

    settings = command_settings()

    async def check() -> HealthReport:
        client = None
        if settings.enable_temporal:
            client = await connect(settings, runtime=create_runtime(""))
        services = Services.from_settings(settings, client)
        try:
            return await run_health_check(services, client)
        finally:
            await services.close()

    report = run_async(check())
    if json_output:
        out.print_json(report.model_dump_json())
    else:
        out.print(_health_table(report))
    raise typer.Exit(0 if report.healthy else 1)


@app.command("api-key")
def api_key() -> None:
    """Make a new gateway API key: give the key to the client, its hash to API_KEY_HASHES."""
    from nexpo_workflows.api.auth import hash_api_key, new_api_key

    key = new_api_key()
    out.print(f"API key (shown once): {key}", soft_wrap=True, highlight=False)
    out.print(f"API_KEY_HASHES entry: {hash_api_key(key)}", soft_wrap=True, highlight=False)


@db_app.command("init")
def db_init() -> None:
    """Create the schema in every enabled database (safe to repeat)."""
    from nexpo_workflows.providers.schema import create_schemas

    settings = command_settings()
    for line in run_async(create_schemas(settings)):
        out.print(line)


# --- Cross-database sync ---------------------------------------------------------------------


def _health_table(report: HealthReport) -> Table:
    table = Table(title=f"Health at {report.checked_at:%Y-%m-%d %H:%M:%S %Z}")
    table.add_column("dependency")
    table.add_column("status")
    table.add_column("latency (ms)", justify="right")
    table.add_column("error")
    for dependency in report.dependencies:
        up = dependency.status is DependencyState.UP
        table.add_row(
            dependency.name,
            f"[green]{dependency.status}[/]" if up else f"[red]{dependency.status}[/]",
            f"{dependency.latency_ms:.1f}",
            dependency.error or "",
        )
    return table
