"""What every command shares: the app, its consoles, the settings it runs with, and one
mapping of errors to messages and exit codes."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Coroutine
from contextlib import asynccontextmanager
from typing import Any, NoReturn, TypeVar

import typer
from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.table import Table
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ApplicationError

from nexpo_workflows import eventloop
from nexpo_workflows.config import ConfigError, Settings, load_settings
from nexpo_workflows.dev_record import next_to_dev_stack, record_path
from nexpo_workflows.devserver import DevServerError
from nexpo_workflows.edge_errors import EDGE_ERRORS, classify
from nexpo_workflows.execution import InProcessRuns
from nexpo_workflows.ports import PortInUseError
from nexpo_workflows.services import Services
from nexpo_workflows.telemetry import configure_logging
from nexpo_workflows.users.idempotency import (
    IdempotencyKeyConflictError,
    IdempotencyKeyReusedError,
)
from nexpo_workflows.users.models import SagaResult
from nexpo_workflows.users.service import (
    AlreadyOnboardingError,
    OnboardingEndedError,
    SagaFailedError,
)
from nexpo_workflows.users.steps import INVALID_INPUT

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
M = TypeVar("M", bound=BaseModel)

# Errors a user can fix from their side: one line, no traceback.
_USER_ERRORS = (PortInUseError, DevServerError)
# A dependency down (exit 1) or refusing the input (exit 2): one line, as the gateway says it.
_EDGE_EXIT_CODES = {"unavailable": 1, "refused": 2, "not_found": 1, "conflict": 1}


def fail(message: str, code: int) -> NoReturn:
    err.print(f"nexpo-workflows: {message}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def configured_settings() -> Settings:
    try:
        settings = load_settings()
    except ConfigError as error:
        fail(str(error), 2)
    configure_logging(settings.log_level)
    return settings


def command_settings() -> Settings:
    """The configuration, pointed at a running ``nexpo-workflows dev`` stack when it names no
    Temporal server of its own."""
    settings, stack = next_to_dev_stack(configured_settings())
    if stack is not None:
        err.print(
            f"nexpo-workflows: using the dev stack running at {stack.temporal_server_url} "
            f"(recorded in {record_path(settings.data_dir)})",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    return settings


def run_async(coroutine: Coroutine[Any, Any, T]) -> T:
    try:
        return eventloop.run(coroutine)
    except _USER_ERRORS as error:
        fail(str(error), 1)
    except EDGE_ERRORS as error:
        failure = classify(error)
        fail(failure.message, _EDGE_EXIT_CODES[failure.kind])
    except ConfigError as error:  # found at start-up, e.g. tracing on without its packages
        fail(str(error), 2)
    except (AlreadyOnboardingError, IdempotencyKeyConflictError, OnboardingEndedError) as error:
        fail(str(error), 1)
    except IdempotencyKeyReusedError as error:
        fail(str(error), 2)
    except SagaFailedError as error:
        print_saga_result(error.result)
        # A database refused the input: the caller's mistake, like any invalid input.
        fail(str(error), 2 if error.result.failure_kind == INVALID_INPUT else 1)


def require_temporal(settings: Settings, command: str) -> None:
    if not settings.enable_temporal:
        fail(f"`{command}` needs ENABLE_TEMPORAL=true (a Temporal server); it is false", 2)


def refuse_no_wait_in_process(settings: Settings, wait: bool, command: str) -> None:
    if not (wait or settings.enable_temporal):
        fail(
            f"`{command} --no-wait` needs ENABLE_TEMPORAL=true: without Temporal the run "
            "happens in this command, which waits for it",
            2,
        )


@asynccontextmanager
async def in_process(settings: Settings) -> AsyncIterator[tuple[InProcessRuns, Services]]:
    """ENABLE_TEMPORAL=false: the workflows run in this command, with the activities a worker
    of this configuration would have."""
    from nexpo_workflows import registry  # every workflow: only the commands that run one

    services = Services.from_settings(settings)
    try:
        yield InProcessRuns(registry.activities(services)), services
    finally:
        await services.close()


async def result_or_details(result: Awaitable[M], result_type: type[M]) -> M:
    """The workflow's result, or the one a failed workflow carries in its failure's details;
    any other failure ends the command with its message."""
    try:
        return await result
    except WorkflowFailureError as error:
        cause = error.cause
        if isinstance(cause, ApplicationError) and cause.details:
            return result_type.model_validate(cause.details[0])
        raise


def print_saga_result(result: SagaResult) -> None:
    out.print(f"user {result.user_id}: {result.status}", soft_wrap=True, highlight=False)
    table = Table()
    for column in ("database", "status", "error"):
        table.add_column(column)
    for outcome in result.providers:
        error = " / ".join(e for e in (outcome.error, outcome.compensation_error) if e)
        table.add_row(outcome.provider, str(outcome.status), error)
    out.print(table)


def input_errors(error: ValidationError | json.JSONDecodeError) -> str:
    if isinstance(error, json.JSONDecodeError):
        return f"--profile is not JSON ({error.msg})"
    return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
