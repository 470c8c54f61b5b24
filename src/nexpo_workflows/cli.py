"""The ``nexpo-workflows`` command-line tool."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any, NoReturn, TypeVar

import typer
from pydantic import BaseModel, SecretStr, ValidationError
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from temporalio.client import (
    Client,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowQueryFailedError,
    WorkflowUpdateFailedError,
)
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from nexpo_workflows.client import connect
from nexpo_workflows.config import ConfigError, Settings, load_settings
from nexpo_workflows.decisions.models import ApprovalInput, DecisionRequest, DecisionStatus
from nexpo_workflows.decisions.service import (
    ApprovalRefusedError,
    DecisionExistsError,
    DecisionNotFoundError,
    DecisionService,
)
from nexpo_workflows.dev_record import next_to_dev_stack, record_path
from nexpo_workflows.devserver import DevServerError
from nexpo_workflows.edge_errors import EDGE_ERRORS, classify
from nexpo_workflows.health.models import DependencyState, HealthReport
from nexpo_workflows.ports import PortInUseError
from nexpo_workflows.providers import (
    enabled_provider_names,
    enabled_providers,
)
from nexpo_workflows.services import Services
from nexpo_workflows.sync.capture import CaptureRefusedError
from nexpo_workflows.sync.datasets import DatasetConfigError, dataset_configs, plan_dataset
from nexpo_workflows.sync.models import SyncInput, SyncProgress, SyncResult
from nexpo_workflows.sync.runs import (
    CaptureReset,
    SyncAlreadyRunningError,
    SyncFailedError,
    SyncRunView,
    current_progress,
    reset_capture,
    start_sync,
    sync_outcome,
    sync_status,
)
from nexpo_workflows.sync.schedules import (
    IntervalError,
    ScheduleNotFoundError,
    SyncSchedules,
    SyncScheduleView,
    parse_interval,
)
from nexpo_workflows.telemetry import configure_logging, create_runtime
from nexpo_workflows.users.idempotency import (
    IdempotencyKeyConflictError,
    IdempotencyKeyReusedError,
)
from nexpo_workflows.users.models import SagaResult
from nexpo_workflows.users.service import (
    AlreadyOnboardingError,
    CreateUserRequest,
    OnboardingEndedError,
    SagaFailedError,
    StillRunning,
    UserService,
    UserView,
    saga_outcome,
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


def _fail(message: str, code: int) -> NoReturn:
    err.print(f"nexpo-workflows: {message}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _configured_settings() -> Settings:
    try:
        settings = load_settings()
    except ConfigError as error:
        _fail(str(error), 2)
    configure_logging(settings.log_level)
    return settings


def _settings() -> Settings:
    """The configuration, pointed at a running ``nexpo-workflows dev`` stack when it names no
    Temporal server of its own."""
    settings, stack = next_to_dev_stack(_configured_settings())
    if stack is not None:
        err.print(
            f"nexpo-workflows: using the dev stack running at {stack.temporal_server_url} "
            f"(recorded in {record_path(settings.data_dir)})",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    return settings


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    try:
        return asyncio.run(coroutine)
    except _USER_ERRORS as error:
        _fail(str(error), 1)
    except EDGE_ERRORS as error:
        failure = classify(error)
        _fail(failure.message, _EDGE_EXIT_CODES[failure.kind])
    except ConfigError as error:  # found at start-up, e.g. tracing on without its packages
        _fail(str(error), 2)
    except (AlreadyOnboardingError, IdempotencyKeyConflictError, OnboardingEndedError) as error:
        _fail(str(error), 1)
    except IdempotencyKeyReusedError as error:
        _fail(str(error), 2)
    except SagaFailedError as error:
        _print_result(error.result)
        # A database refused the input: the caller's mistake, like any invalid input.
        _fail(str(error), 2 if error.result.failure_kind == INVALID_INPUT else 1)


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

    _run(run_dev_stack(_configured_settings()))


@app.command()
def health(
    json_output: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Check every enabled dependency; exit 1 when one is down."""
    from nexpo_workflows.health.run import run_health_check

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


users_app = typer.Typer(help="Onboard, look up and offboard users.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
app.add_typer(users_app, name="users")
app.add_typer(db_app, name="db")
cloud_app = typer.Typer(help="Multi-cloud operations.", no_args_is_help=True)
app.add_typer(cloud_app, name="cloud")


@asynccontextmanager
async def _user_service(settings: Settings) -> AsyncIterator[UserService]:
    client = None
    if settings.enable_temporal:
        client = await connect(settings, runtime=create_runtime(""))
    services = Services.from_settings(settings, client)
    try:
        yield UserService(services, client)
    finally:
        await services.close()


def _print_result(result: SagaResult) -> None:
    out.print(f"user {result.user_id}: {result.status}", soft_wrap=True, highlight=False)
    table = Table()
    for column in ("database", "status", "error"):
        table.add_column(column)
    for outcome in result.providers:
        error = " / ".join(e for e in (outcome.error, outcome.compensation_error) if e)
        table.add_row(outcome.provider, str(outcome.status), error)
    out.print(table)


@users_app.command("create")
def users_create(
    email: str = typer.Option(..., help="The user's email address."),
    name: str = typer.Option(..., help="The user's name."),
    password: str = typer.Option(
        ..., prompt=True, hide_input=True, confirmation_prompt=True, help="Hashed before use."
    ),
    profile: str | None = typer.Option(None, help="Optional profile as a JSON object."),
    idempotency_key: str | None = typer.Option(
        None, help="Same key and request, same outcome; another request is refused."
    ),
    wait: bool = typer.Option(
        True, help="Wait for the saga to finish (at most ONBOARDING_WAIT_SECONDS)."
    ),
) -> None:
    """Create a user in every enabled database, or in none."""
    settings = _settings()
    try:
        request = CreateUserRequest(
            email=email,
            name=name,
            password=SecretStr(password),
            profile=json.loads(profile) if profile else None,
        )
    except (ValidationError, json.JSONDecodeError) as error:
        _fail(f"invalid input: {_input_errors(error)}", 2)

    async def create() -> SagaResult | StillRunning:
        async with _user_service(settings) as users:
            if users.client is None:
                return await users.onboard_in_process(request, idempotency_key)
            if wait:
                return await users.onboard_and_wait(
                    request, idempotency_key, settings.onboarding_wait
                )
            return StillRunning((await users.start_onboarding(request, idempotency_key)).id)

    outcome = _run(create())
    if isinstance(outcome, StillRunning):
        going_on = f" (still running after {settings.onboarding_wait_seconds:g}s)" if wait else ""
        out.print(
            f"started workflow {outcome.workflow_id}{going_on}", soft_wrap=True, highlight=False
        )
    else:
        _print_result(outcome)


@users_app.command("get")
def users_get(user_id: str) -> None:
    """Show a user and which enabled databases hold it."""
    settings = _settings()

    async def get() -> UserView | None:
        async with _user_service(settings) as users:
            return await users.get(user_id)

    user = _run(get())
    if user is None:
        _fail(f"no user {user_id} in any database", 1)
    out.print_json(user.model_dump_json())


@users_app.command("delete")
def users_delete(user_id: str) -> None:
    """Delete a user from every enabled database (offboarding; safe to repeat)."""
    settings = _settings()

    async def delete() -> SagaResult:
        async with _user_service(settings) as users:
            if users.client is None:
                return await users.offboard_in_process(user_id)
            return await saga_outcome(await users.start_offboarding(user_id))

    _print_result(_run(delete()))


@cloud_app.command("replicate")
def cloud_replicate(
    key: str = typer.Argument(..., help="The object's key."),
    source: str = typer.Option(..., help="The store that holds it (local, s3, azure, gcs)."),
    target: list[str] | None = typer.Option(None, help="A target store (repeat); default: all."),
) -> None:
    """Copy an object from one store to the others and verify every copy."""
    from nexpo_workflows.replication.models import ReplicateInput, ReplicateResult
    from nexpo_workflows.replication.workflow import ReplicateObjectWorkflow

    settings = _settings()
    _require_temporal(settings, "cloud replicate")

    async def replicate() -> ReplicateResult:
        client = await connect(settings, runtime=create_runtime(""))
        try:
            return await client.execute_workflow(
                ReplicateObjectWorkflow.run,
                ReplicateInput(key=key, source=source, targets=target or None),
                id=f"replicate-{uuid.uuid4()}",
                task_queue=settings.temporal_task_queue,
            )
        except WorkflowFailureError as error:
            cause = error.cause
            if isinstance(cause, ApplicationError) and cause.details:
                return ReplicateResult.model_validate(cause.details[0])
            _fail(str(cause or error), 1)

    result = _run(replicate())
    table = Table()
    for column in ("store", "status", "sha256", "error"):
        table.add_column(column)
    for replica in result.replicas:
        table.add_row(replica.store, str(replica.status), replica.sha256 or "", replica.error or "")
    out.print(f"{result.key} from {result.source}", soft_wrap=True, highlight=False)
    out.print(table)
    raise typer.Exit(0 if result.complete else 1)


def _tenant_command(tenant_id: str, deprovision: bool) -> None:
    from nexpo_workflows.api.routes.cloud import tenant_workflow_id
    from nexpo_workflows.provisioning.models import (
        DeprovisionInput,
        ProvisioningResult,
        ProvisionInput,
    )
    from nexpo_workflows.provisioning.workflows import (
        DeprovisionResourcesWorkflow,
        ProvisionResourcesWorkflow,
    )

    settings = _settings()
    _require_temporal(settings, "cloud provision/deprovision")

    async def run() -> ProvisioningResult:
        client = await connect(settings, runtime=create_runtime(""))
        workflow_id = tenant_workflow_id(tenant_id)
        queue = settings.temporal_task_queue
        try:
            if deprovision:
                return await client.execute_workflow(
                    DeprovisionResourcesWorkflow.run,
                    DeprovisionInput(tenant_id=tenant_id),
                    id=workflow_id,
                    task_queue=queue,
                )
            return await client.execute_workflow(
                ProvisionResourcesWorkflow.run,
                ProvisionInput(tenant_id=tenant_id),
                id=workflow_id,
                task_queue=queue,
            )
        except WorkflowFailureError as error:
            cause = error.cause
            if isinstance(cause, ApplicationError) and cause.details:
                return ProvisioningResult.model_validate(cause.details[0])
            _fail(str(cause or error), 1)

    try:
        result = _run(run())
    except ValidationError as error:
        _fail(f"invalid tenant id: {_input_errors(error)}", 2)
    table = Table()
    for column in ("resource", "status", "error"):
        table.add_column(column)
    for outcome in result.resources:
        errors = " / ".join(e for e in (outcome.error, outcome.compensation_error) if e)
        table.add_row(outcome.resource.label(), str(outcome.status), errors)
    out.print(f"tenant {result.tenant_id}: {result.status}", soft_wrap=True, highlight=False)
    out.print(table)
    raise typer.Exit(0 if result.status == "completed" else 1)


@cloud_app.command("provision")
def cloud_provision(tenant_id: str) -> None:
    """Create the tenant's resources in every enabled store and SQL database, or none."""
    _tenant_command(tenant_id, deprovision=False)


@cloud_app.command("deprovision")
def cloud_deprovision(tenant_id: str) -> None:
    """Remove everything provisioned for the tenant (safe to repeat)."""
    _tenant_command(tenant_id, deprovision=True)


@cloud_app.command("failover-status")
def cloud_failover_status(service: str) -> None:
    """The active side of a service (its durable routing record) and its monitor's state."""
    from nexpo_workflows.api.routes.cloud import failover_workflow_id
    from nexpo_workflows.failover.models import FailoverState, RoutingRecord
    from nexpo_workflows.failover.routing import RoutingTable

    settings = _settings()

    async def status() -> tuple[RoutingRecord | None, FailoverState | None]:
        table = RoutingTable.from_settings(settings)
        try:
            record = await table.read(service)
        finally:
            await table.close()
        if not settings.enable_temporal:
            return record, None
        client = await connect(settings, runtime=create_runtime(""))
        try:
            monitor: FailoverState = await client.get_workflow_handle(
                failover_workflow_id(service)
            ).query(
                "state", result_type=FailoverState, rpc_timeout=settings.temporal_answer_timeout
            )
        except (RPCError, WorkflowQueryFailedError):
            return record, None
        return record, monitor

    record, monitor = _run(status())
    out.print_json(
        json.dumps(
            {
                "service": service,
                "routing": record.model_dump(mode="json") if record else None,
                "monitor": monitor.model_dump(mode="json") if monitor else None,
            }
        )
    )


def _update_monitor(service: str, update: str, body: BaseModel, command: str) -> None:
    """Run one of the failover monitor's updates and print its state; refused: exit 2."""
    from nexpo_workflows.api.routes.cloud import failover_workflow_id
    from nexpo_workflows.failover.models import FailoverState

    settings = _settings()
    _require_temporal(settings, f"cloud {command}")

    async def call() -> FailoverState:
        client = await connect(settings, runtime=create_runtime(""))
        handle = client.get_workflow_handle(failover_workflow_id(service))
        try:
            state: FailoverState = await handle.execute_update(
                update,
                body,
                result_type=FailoverState,
                rpc_timeout=settings.temporal_answer_timeout,
            )
        except WorkflowUpdateFailedError as error:
            _fail(f"refused: {error.cause}", 2)
        except RPCError as error:
            if error.status != RPCStatusCode.NOT_FOUND:
                raise
            _fail(f"no monitor of {service}", 1)
        return state

    state = _run(call())
    held = f", held ({state.hold_reason})" if state.held else ""
    out.print(
        f"{service}: active side {state.active_side}, epoch {state.epoch}{held}",
        soft_wrap=True,
        highlight=False,
    )


def _move(service: str, side: str, reason: str, hold: bool) -> None:
    from nexpo_workflows.failover.models import SetActiveSideInput

    command = "promote" if side == "secondary" else "failback"
    _update_monitor(
        service,
        "set_active_side",
        SetActiveSideInput(side=side, reason=reason, hold=hold),
        command,
    )


_HOLD_OPTION = typer.Option(
    False, "--hold", help="Hold the side in the same step: no automatic switch until released."
)


@cloud_app.command("promote")
def cloud_promote(
    service: str,
    reason: str = typer.Option(..., help="Why, for the record."),
    hold: bool = _HOLD_OPTION,
) -> None:
    """Make the secondary the active side now."""
    _move(service, "secondary", reason, hold)


@cloud_app.command("failback")
def cloud_failback(
    service: str,
    reason: str = typer.Option(..., help="Why, for the record."),
    hold: bool = _HOLD_OPTION,
) -> None:
    """Make the primary the active side now."""
    _move(service, "primary", reason, hold)


@cloud_app.command("hold")
def cloud_hold(service: str, reason: str = typer.Option(..., help="Why, for the record.")) -> None:
    """Keep the active side as it is: the monitor switches no side on its own until released."""
    from nexpo_workflows.failover.models import HoldInput

    _update_monitor(service, "hold", HoldInput(reason=reason), "hold")


@cloud_app.command("release")
def cloud_release(
    service: str, reason: str = typer.Option(..., help="Why, for the record.")
) -> None:
    """End a hold: the monitor switches sides on its probes again."""
    from nexpo_workflows.failover.models import HoldInput

    _update_monitor(service, "release", HoldInput(reason=reason), "release")


decisions_app = typer.Typer(
    help="AI decisions on support requests, and their human approval.", no_args_is_help=True
)
app.add_typer(decisions_app, name="decisions")


def _decisions(command: str, call: Callable[[DecisionService], Awaitable[T]]) -> T:
    settings = _settings()
    _require_temporal(settings, f"decisions {command}")

    async def run() -> T:
        client = await connect(settings, runtime=create_runtime(""))
        try:
            return await call(
                DecisionService(
                    client, settings.temporal_task_queue, settings.temporal_answer_timeout
                )
            )
        except (DecisionExistsError, DecisionNotFoundError) as error:
            _fail(str(error), 1)
        except ApprovalRefusedError as error:
            _fail(f"refused: {error}", 2)
        except WorkflowFailureError as error:
            _fail(f"the decision failed: {error.cause or error}", 1)

    return _run(run())


def _print_status(status: DecisionStatus) -> None:
    out.print_json(status.model_dump_json())


@decisions_app.command("create")
def decisions_create(
    customer_email: str = typer.Option(..., help="Who asked."),
    subject: str = typer.Option(..., help="The request's subject."),
    message: str = typer.Option(..., help="The request's text."),
    order_id: str | None = typer.Option(None, help="The order it is about."),
    order_amount: str | None = typer.Option(None, help="The order's amount (a refund's bound)."),
    request_id: str | None = typer.Option(None, help="One decision per id; default: a new one."),
    wait: bool = typer.Option(True, help="Wait until it is done or awaits approval."),
) -> None:
    """Let the model choose the next step of a support request (AIDecisionWorkflow)."""
    try:
        request = DecisionRequest(
            request_id=request_id or str(uuid.uuid4()),
            customer_email=customer_email,
            subject=subject,
            message=message,
            order_id=order_id,
            order_amount=order_amount,
        )
    except ValidationError as error:
        _fail(f"invalid input: {_input_errors(error)}", 2)

    async def create(decisions: DecisionService) -> DecisionStatus | str:
        handle = await decisions.start(request)
        return await decisions.wait(request.request_id) if wait else handle.id

    outcome = _decisions("create", create)
    if isinstance(outcome, str):
        out.print(f"started workflow {outcome}", soft_wrap=True, highlight=False)
    else:
        _print_status(outcome)


@decisions_app.command("show")
def decisions_show(request_id: str) -> None:
    """The decision's stage, the model's choice, its validation, approval and result."""
    _print_status(_decisions("show", lambda decisions: decisions.status(request_id)))


@decisions_app.command("approve")
def decisions_approve(
    request_id: str,
    approver: str = typer.Option(..., help="Who decides, for the record."),
    reject: bool = typer.Option(False, "--reject", help="Reject: the request is escalated."),
    comments: str = typer.Option("", help="Why, for the record."),
) -> None:
    """Approve (or --reject) a decision that awaits a person."""
    approval = ApprovalInput(approver=approver, approved=not reject, comments=comments)
    _print_status(_decisions("approve", lambda decisions: decisions.approve(request_id, approval)))


content_app = typer.Typer(
    help="The AI content pipeline: draft, review, publish everywhere or nowhere.",
    no_args_is_help=True,
)
app.add_typer(content_app, name="content")


async def _result_or_details(handle: WorkflowHandle[Any, Any], result_type: type[M]) -> M:
    """The workflow's result, or the one a failed workflow carries in its failure's details;
    any other failure ends the command with its message."""
    try:
        result: M = await handle.result()
    except WorkflowFailureError as error:
        cause = error.cause
        if isinstance(cause, ApplicationError) and cause.details:
            return result_type.model_validate(cause.details[0])
        _fail(str(cause or error), 1)
    return result


@content_app.command("create")
def content_create(
    topic: str = typer.Option(..., help="What the content is about."),
    instructions: str | None = typer.Option(None, help="Length, tone, points to cover..."),
    audience: str | None = typer.Option(None, help="Who it is for."),
    review: str | None = typer.Option(None, help="ai or human; default: CONTENT_REVIEW_MODE."),
    reviewer: list[str] | None = typer.Option(None, help="A reviewer's email (repeat)."),
    recipient: list[str] | None = typer.Option(
        None, help="Who is told of the outcome (repeat); default: NOTIFY_EMAIL_TO."
    ),
    review_timeout: float | None = typer.Option(
        None, help="Seconds a human review may take; default: CONTENT_REVIEW_TIMEOUT_SECONDS."
    ),
    wait: bool = typer.Option(True, help="Wait for the pipeline to finish."),
) -> None:
    """Start the pipeline; exit 0 when the content was published, 1 otherwise."""
    from nexpo_workflows.content.models import ContentRequest, ContentResult, new_content_id
    from nexpo_workflows.content.workflow import AIContentPipelineWorkflow

    settings = _settings()
    _require_temporal(settings, "content create")
    try:
        request = ContentRequest.model_validate(
            {
                "topic": topic,
                "instructions": instructions,
                "audience": audience,
                "review_mode": review,
                "reviewers": reviewer or [],
                "recipients": recipient or [],
                "review_timeout_seconds": review_timeout,
            }
        )
    except ValidationError as error:
        _fail(f"invalid input: {_input_errors(error)}", 2)

    async def create() -> ContentResult | str:
        client = await connect(settings, runtime=create_runtime(""))
        handle = await client.start_workflow(
            AIContentPipelineWorkflow.run,
            request,
            id=new_content_id(),
            task_queue=settings.temporal_task_queue,
        )
        if not wait:
            return handle.id
        # On stderr, so a reviewer can be told the id while this waits.
        err.print(f"started {handle.id}", highlight=False)
        return await _result_or_details(handle, ContentResult)

    outcome = _run(create())
    if isinstance(outcome, str):
        out.print(outcome, highlight=False)
        return
    out.print_json(outcome.model_dump_json())
    raise typer.Exit(0 if outcome.status == "published" else 1)


@content_app.command("review")
def content_review(
    content_id: str,
    reviewer: str = typer.Option(..., help="Who reviews (recorded with the decision)."),
    decision: str = typer.Option(..., help="approve, reject or request-changes."),
    comments: str = typer.Option("", help="What to change, or why."),
) -> None:
    """Review a pipeline's draft; exit 2 when the pipeline refuses the review."""
    from nexpo_workflows.content.models import HumanReview, PipelineStatus
    from nexpo_workflows.content.workflow import SUBMIT_REVIEW, AIContentPipelineWorkflow

    settings = _settings()
    _require_temporal(settings, "content review")
    try:
        review = HumanReview(
            reviewer=reviewer, decision=decision.replace("-", "_"), comments=comments
        )
    except ValidationError as error:
        _fail(f"invalid input: {_input_errors(error)}", 2)

    async def submit() -> PipelineStatus:
        client = await connect(settings, runtime=create_runtime(""))
        handle = client.get_workflow_handle_for(AIContentPipelineWorkflow.run, content_id)
        try:
            status: PipelineStatus = await handle.execute_update(
                SUBMIT_REVIEW,
                review,
                result_type=PipelineStatus,
                rpc_timeout=settings.temporal_answer_timeout,
            )
        except WorkflowUpdateFailedError as error:
            _fail(f"refused: {error.cause}", 2)
        except RPCError as error:
            _fail(f"no running pipeline {content_id}: {error}", 1)
        return status

    out.print_json(_run(submit()).model_dump_json())


@content_app.command("show")
def content_show(content_id: str) -> None:
    """A pipeline's stage, draft, revision, reviews and token usage, as JSON."""
    from nexpo_workflows.content.models import PipelineStatus
    from nexpo_workflows.content.workflow import AIContentPipelineWorkflow

    settings = _settings()
    _require_temporal(settings, "content show")

    async def show() -> PipelineStatus:
        client = await connect(settings, runtime=create_runtime(""))
        handle = client.get_workflow_handle_for(AIContentPipelineWorkflow.run, content_id)
        try:
            return await handle.query(
                AIContentPipelineWorkflow.status, rpc_timeout=settings.temporal_answer_timeout
            )
        except (RPCError, WorkflowQueryFailedError) as error:
            _fail(f"no pipeline {content_id}: {error}", 1)

    out.print_json(_run(show()).model_dump_json())


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

    settings = _settings()
    for line in _run(create_schemas(settings)):
        out.print(line)


# --- Cross-database sync ---------------------------------------------------------------------

sync_app = typer.Typer(
    help="Sync datasets across databases, now or on a schedule.", no_args_is_help=True
)
app.add_typer(sync_app, name="sync")
# How often `sync run` asks the running workflow how far it got.
_SYNC_POLL_SECONDS = 0.5


def _sync_call(
    dataset: str,
    command: str,
    call: Callable[[Client, Services], Awaitable[T]],
    *,
    configured: bool = True,
) -> T:
    """Run ``call`` connected to Temporal, with the enabled providers (the source's change
    log); an unknown dataset, or a refusal of its configuration or of its source's capture,
    exits 2 (``configured=False``: not checked first, so a schedule can be removed after its
    dataset left the configuration)."""
    settings = _settings()
    _require_temporal(settings, f"sync {command}")
    if configured:
        try:
            plan_dataset(settings, enabled_provider_names(settings), dataset)
        except DatasetConfigError as error:
            _fail(str(error), 2)

    async def connected() -> T:
        client = await connect(settings, runtime=create_runtime(""))
        services = Services(settings=settings, client=client, providers=enabled_providers(settings))
        try:
            return await call(client, services)
        finally:
            await services.close()

    try:
        return _run(connected())
    except (DatasetConfigError, CaptureRefusedError) as error:
        _fail(str(error), 2)
    except (SyncAlreadyRunningError, ScheduleNotFoundError) as error:
        _fail(str(error), 1)


def _counts(progress: SyncProgress) -> str:
    watermark = progress.watermark
    return (
        f"{progress.rows_seen} rows seen, {progress.rows_synced} synced, "
        f"{progress.rows_quarantined} quarantined, {progress.rows_repaired} repaired"
        + (f", watermark {watermark.version}/{watermark.id}" if watermark else "")
    )


@contextmanager
def _progress_display(dataset: str) -> Iterator[Callable[[SyncProgress], None]]:
    """A live bar on a terminal; otherwise (a log, a pipe) a line whenever progress moved."""
    if out.is_terminal:
        with Progress(
            SpinnerColumn(),
            TextColumn(f"sync {dataset}"),
            BarColumn(),
            TextColumn("{task.fields[phase]}: {task.fields[counts]}"),
            TimeElapsedColumn(),
            console=out,
        ) as bar:
            task = bar.add_task(dataset, total=None, phase="starting", counts="")
            yield lambda p: bar.update(task, phase=str(p.phase), counts=_counts(p))
        return
    shown: list[str] = []

    def print_line(progress: SyncProgress) -> None:
        line = f"sync {dataset} {progress.phase}: {_counts(progress)}"
        if shown[-1:] != [line]:
            shown.append(line)
            out.print(line, soft_wrap=True, highlight=False)

    yield print_line


async def _follow(
    client: Client, handle: WorkflowHandle[Any, SyncResult], dataset: str
) -> SyncResult:
    outcome = asyncio.ensure_future(sync_outcome(handle))
    with _progress_display(dataset) as show:
        while not outcome.done():
            progress = await current_progress(client, dataset)
            if progress is not None:
                show(progress)
            await asyncio.wait({outcome}, timeout=_SYNC_POLL_SECONDS)
    return await outcome


def _print_sync_result(result: SyncResult) -> None:
    out.print(
        f"sync {result.dataset}: {result.status}; {_counts(result.progress)}; "
        f"{result.progress.batches} batches",
        soft_wrap=True,
        highlight=False,
    )
    if result.unrepaired:
        table = Table(title="rows that still differ after repair")
        for column in ("target", "source rows", "target rows", "ids"):
            table.add_column(column)
        for mismatch in result.unrepaired:
            table.add_row(
                mismatch.target,
                str(mismatch.source_count),
                str(mismatch.target_count),
                ", ".join(mismatch.ids),
            )
        out.print(table)


def _print_schedule(view: SyncScheduleView) -> None:
    upcoming = f", next run {view.next_runs[0]:%Y-%m-%d %H:%M:%S %Z}" if view.next_runs else ""
    state = "paused" if view.paused else "active"
    out.print(
        f"{view.schedule_id}: every {view.every}, {state}{upcoming} ({view.note})",
        soft_wrap=True,
        highlight=False,
    )


@sync_app.command("run")
def sync_run(
    dataset: str,
    full: bool = typer.Option(False, help="Ignore the watermark: sync every row again."),
    audit: bool = typer.Option(
        False, help="Write nothing new: verify every range and repair what differs."
    ),
    wait: bool = typer.Option(True, help="Follow the run with its progress until it ends."),
) -> None:
    """Sync a dataset now; exit 1 when rows still differ after repair (they are named)."""

    async def run(client: Client, services: Services) -> SyncResult | str:
        options = SyncInput(dataset=dataset, full=full, audit=audit)
        handle = await start_sync(client, services, options)
        return await _follow(client, handle, dataset) if wait else handle.id

    try:
        outcome = _sync_call(dataset, "run", run)
    except SyncFailedError as failed:
        if failed.report is not None:
            _print_sync_result(failed.report)
        _fail(str(failed), 1)
    if isinstance(outcome, str):
        out.print(f"started workflow {outcome}")
    else:
        _print_sync_result(outcome)


@sync_app.command("status")
def sync_status_command(dataset: str) -> None:
    """The progress of the dataset's current run, or the outcome of its last one, and the lag
    of its change log (JSON); a warning on stderr when the log is lost or holds too much."""

    async def status(client: Client, services: Services) -> SyncRunView | None:
        return await sync_status(client, services, dataset)

    view = _sync_call(dataset, "status", status)
    if view is None:
        _fail(f"no sync of {dataset} has run", 1)
    out.print_json(view.model_dump_json())
    if view.capture is not None and view.capture.warning:
        err.print(f"warning: {view.capture.warning}", markup=False, highlight=False)


@sync_app.command("schedule")
def sync_schedule(
    dataset: str,
    every: str = typer.Option(..., help="30s, 5m, 1h, 1d or a sum such as 1h30m; at least 10s."),
) -> None:
    """Sync a dataset at an interval (a Temporal Schedule); run again to change it."""
    try:
        interval = parse_interval(every)
    except IntervalError as error:
        _fail(str(error), 2)

    async def upsert(client: Client, services: Services) -> SyncScheduleView:
        return await SyncSchedules(client, services.settings).upsert(dataset, interval)

    _print_schedule(_sync_call(dataset, "schedule", upsert))


@sync_app.command("pause")
def sync_pause(dataset: str) -> None:
    """Stop the schedule from starting runs (a run going on finishes)."""

    async def pause(client: Client, services: Services) -> SyncScheduleView:
        return await SyncSchedules(client, services.settings).pause(dataset, "paused from the CLI")

    _print_schedule(_sync_call(dataset, "pause", pause))


@sync_app.command("resume")
def sync_resume(dataset: str) -> None:
    """Let a paused schedule start runs again."""

    async def resume(client: Client, services: Services) -> SyncScheduleView:
        schedules = SyncSchedules(client, services.settings)
        return await schedules.resume(dataset, "resumed from the CLI")

    _print_schedule(_sync_call(dataset, "resume", resume))


@sync_app.command("unschedule")
def sync_unschedule(
    dataset: str,
    drop_capture: bool = typer.Option(
        False, help="Also drop the dataset's change log and copy state, as `sync reset` does."
    ),
) -> None:
    """Delete the dataset's schedule (a run going on finishes). Its change log stays, and a
    PostgreSQL source keeps WAL for it, unless --drop-capture."""

    async def delete(client: Client, services: Services) -> CaptureReset | None:
        schedules = SyncSchedules(client, services.settings)
        reset = None
        if drop_capture:
            # Refused (no schedule, a run going on) before anything changes.
            await schedules.describe(dataset)
            reset = await reset_capture(client, services, dataset)
        await schedules.delete(dataset)
        return reset

    reset = _sync_call(dataset, "unschedule", delete, configured=drop_capture)
    out.print(f"schedule of {dataset} deleted", soft_wrap=True, highlight=False)
    if reset is not None:
        _print_reset(reset)


def _print_reset(reset: CaptureReset) -> None:
    dropped = "dropped" if reset.dropped else "was not there"
    out.print(
        f"change log of {reset.dataset} {dropped}; its next run copies the table anew",
        soft_wrap=True,
        highlight=False,
    )


@sync_app.command("reset")
def sync_reset(dataset: str) -> None:
    """Drop the dataset's change log (a PostgreSQL replication slot and publication, SQLite
    triggers) and copy state: the source keeps no WAL for it, and its next run copies the
    table anew. Exit 1 while a run of it goes on."""

    async def reset(client: Client, services: Services) -> CaptureReset:
        return await reset_capture(client, services, dataset)

    _print_reset(_sync_call(dataset, "reset", reset))


@sync_app.command("datasets")
def sync_datasets() -> None:
    """The datasets this configuration can sync, with their source and targets."""
    settings = _settings()
    enabled = enabled_provider_names(settings)
    table = Table()
    for column in ("dataset", "source", "targets", "schema"):
        table.add_column(column)
    for dataset in dataset_configs(settings).values():
        source = dataset.source.provider
        targets = dataset.targets
        if targets is None:  # every enabled provider but the source, as a worker resolves it
            targets = [name for name in enabled if name != source]
        table.add_row(
            dataset.name,
            f"{source}:{dataset.source.table}",
            ", ".join(targets),
            dataset.row_schema or "",
        )
    out.print(table)


def _input_errors(error: ValidationError | json.JSONDecodeError) -> str:
    if isinstance(error, json.JSONDecodeError):
        return f"--profile is not JSON ({error.msg})"
    return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())


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
        code = 0
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else int(done.code is not None)
    except KeyboardInterrupt:
        code = 130
    # Leave without interpreter finalization: the Temporal runtime's native threads can still
    # be running then, and tearing Python down under them crashes now and then (SIGSEGV).
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
