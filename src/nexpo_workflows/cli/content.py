"""``content``: the AI content pipeline and its human reviews."""

from __future__ import annotations

import typer
from pydantic import ValidationError
from temporalio.client import (
    WorkflowQueryFailedError,
    WorkflowUpdateFailedError,
)
from temporalio.service import RPCError

from nexpo_workflows.cli._common import (
    app,
    command_settings,
    err,
    fail,
    in_process,
    input_errors,
    out,
    refuse_no_wait_in_process,
    require_temporal,
    result_or_details,
    run_async,
)
from nexpo_workflows.client import connect
from nexpo_workflows.telemetry import create_runtime

content_app = typer.Typer(
    help="The AI content pipeline: draft, review, publish everywhere or nowhere.",
    no_args_is_help=True,
)
app.add_typer(content_app, name="content")


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

    settings = command_settings()
    refuse_no_wait_in_process(settings, wait, "content create")
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
        fail(f"invalid input: {input_errors(error)}", 2)

    async def create() -> ContentResult | str:
        if not settings.enable_temporal:
            async with in_process(settings) as (runs, _):
                return await result_or_details(
                    runs.execute(AIContentPipelineWorkflow.run, request, id=new_content_id()),
                    ContentResult,
                )
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
        return await result_or_details(handle.result(), ContentResult)

    outcome = run_async(create())
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

    settings = command_settings()
    require_temporal(settings, "content review")
    try:
        review = HumanReview(
            reviewer=reviewer, decision=decision.replace("-", "_"), comments=comments
        )
    except ValidationError as error:
        fail(f"invalid input: {input_errors(error)}", 2)

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
            fail(f"refused: {error.cause}", 2)
        except RPCError as error:
            fail(f"no running pipeline {content_id}: {error}", 1)
        return status

    out.print_json(run_async(submit()).model_dump_json())


@content_app.command("show")
def content_show(content_id: str) -> None:
    """A pipeline's stage, draft, revision, reviews and token usage, as JSON."""
    from nexpo_workflows.content.models import PipelineStatus
    from nexpo_workflows.content.workflow import AIContentPipelineWorkflow

    settings = command_settings()
    require_temporal(settings, "content show")

    async def show() -> PipelineStatus:
        client = await connect(settings, runtime=create_runtime(""))
        handle = client.get_workflow_handle_for(AIContentPipelineWorkflow.run, content_id)
        try:
            return await handle.query(
                AIContentPipelineWorkflow.status, rpc_timeout=settings.temporal_answer_timeout
            )
        except (RPCError, WorkflowQueryFailedError) as error:
            fail(f"no pipeline {content_id}: {error}", 1)

    out.print_json(run_async(show()).model_dump_json())
