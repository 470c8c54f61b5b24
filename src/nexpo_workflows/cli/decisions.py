"""``decisions``: the AI decision workflow and its approvals."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

import typer
from pydantic import ValidationError
from temporalio.client import (
    WorkflowFailureError,
)

from nexpo_workflows.cli._common import (
    T,
    app,
    command_settings,
    fail,
    in_process,
    input_errors,
    out,
    refuse_no_wait_in_process,
    require_temporal,
    run_async,
)
from nexpo_workflows.client import connect
from nexpo_workflows.decisions.models import (
    ApprovalInput,
    DecisionRequest,
    DecisionResult,
    DecisionStatus,
)
from nexpo_workflows.decisions.service import (
    ApprovalRefusedError,
    DecisionExistsError,
    DecisionNotFoundError,
    DecisionService,
    decision_workflow_id,
)
from nexpo_workflows.decisions.workflow import AIDecisionWorkflow
from nexpo_workflows.telemetry import create_runtime

decisions_app = typer.Typer(
    help="AI decisions on support requests, and their human approval.", no_args_is_help=True
)
app.add_typer(decisions_app, name="decisions")


def _decisions(command: str, call: Callable[[DecisionService], Awaitable[T]]) -> T:
    settings = command_settings()
    require_temporal(settings, f"decisions {command}")

    async def run() -> T:
        client = await connect(settings, runtime=create_runtime(""))
        try:
            return await call(
                DecisionService(
                    client, settings.temporal_task_queue, settings.temporal_answer_timeout
                )
            )
        except (DecisionExistsError, DecisionNotFoundError) as error:
            fail(str(error), 1)
        except ApprovalRefusedError as error:
            fail(f"refused: {error}", 2)
        except WorkflowFailureError as error:
            fail(f"the decision failed: {error.cause or error}", 1)

    return run_async(run())


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
        fail(f"invalid input: {input_errors(error)}", 2)

    settings = command_settings()
    if not settings.enable_temporal:
        refuse_no_wait_in_process(settings, wait, "decisions create")

        async def decide() -> DecisionResult:
            async with in_process(settings) as (runs, _):
                return await runs.execute(
                    AIDecisionWorkflow.run, request, id=decision_workflow_id(request.request_id)
                )

        out.print_json(run_async(decide()).model_dump_json())
        return

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
