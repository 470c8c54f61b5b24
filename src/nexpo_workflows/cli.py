"""The ``nexpo-workflows`` command-line tool."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Coroutine
from typing import Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from nexpo_workflows.client import TemporalUnavailableError, connect
from nexpo_workflows.config import ConfigError, Settings, load_settings
from nexpo_workflows.devserver import DevServerError
from nexpo_workflows.health.models import DependencyState, HealthReport
from nexpo_workflows.health.run import HealthCheckUnavailableError
from nexpo_workflows.ports import PortInUseError
from nexpo_workflows.telemetry import configure_logging, create_runtime

app = typer.Typer(
    name="nexpo-workflows",
    help="Durable, compensating workflows on Temporal across databases and clouds.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)

T = TypeVar("T")

# Errors a user can fix from their side: one line, no traceback.
_USER_ERRORS = (
    TemporalUnavailableError,
    PortInUseError,
    DevServerError,
    HealthCheckUnavailableError,
)


def _fail(message: str, code: int) -> NoReturn:
    err.print(f"nexpo-workflows: {message}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _settings() -> Settings:
    try:
        settings = load_settings()
    except ConfigError as error:
        _fail(str(error), 2)
    configure_logging(settings.log_level)
    return settings


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    try:
        return asyncio.run(coroutine)
    except _USER_ERRORS as error:
        _fail(str(error), 1)


def _require_temporal(settings: Settings, command: str) -> None:
    if not settings.enable_temporal:
        _fail(f"ENABLE_TEMPORAL is false: `{command}` needs a Temporal server", 2)


@app.command()
def worker() -> None:
    """Run a worker on TEMPORAL_TASK_QUEUE until SIGINT/SIGTERM (run several to scale out)."""
    from nexpo_workflows.worker import serve

    settings = _settings()
    _require_temporal(settings, "worker")
    _run(serve(settings))


@app.command()
def api() -> None:
    """Serve the HTTP gateway on API_HOST:API_PORT."""
    from nexpo_workflows.api.serve import serve_api

    _run(serve_api(_settings()))


@app.command()
def dev() -> None:
    """Embedded Temporal dev server with its Web UI, a worker and the gateway, in one command."""
    from nexpo_workflows.dev import run_dev_stack

    _run(run_dev_stack(_settings()))


@app.command()
def health(
    json_output: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Check every enabled dependency; exit 1 when one is down."""
    from nexpo_workflows.health.run import run_health_check
    from nexpo_workflows.services import Services

    settings = _settings()

    async def check() -> HealthReport:
        client = None
        if settings.enable_temporal:
            client = await connect(settings, runtime=create_runtime(""))
        services = Services.from_settings(settings, client)
        try:
            return await run_health_check(services, client)
        finally:
            await services.close()

    report = _run(check())
    if json_output:
        out.print_json(report.model_dump_json())
    else:
        out.print(_health_table(report))
    raise typer.Exit(0 if report.healthy else 1)


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


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
