"""/api/content: start the AI content pipeline, review its draft, see where it is."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Request, status
from temporalio.client import (
    Client,
    WorkflowHandle,
    WorkflowQueryFailedError,
    WorkflowUpdateFailedError,
)
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from nexpo_workflows.api.deps import (
    IN_PROCESS_DESCRIPTION,
    ClientDep,
    StateDep,
    in_process_result,
)
from nexpo_workflows.content.models import (
    ContentRequest,
    ContentResult,
    HumanReview,
    PipelineStatus,
    new_content_id,
)
from nexpo_workflows.content.workflow import (
    NOT_AWAITING_REVIEW,
    SUBMIT_REVIEW,
    WORKFLOW_NAME,
    AIContentPipelineWorkflow,
)
from nexpo_workflows.users.service import WorkflowAccepted

router = APIRouter(prefix="/api/content", tags=["content"])

ContentId = Annotated[str, Path(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.:-]+$")]
_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "No such pipeline"}}


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=WorkflowAccepted,
    responses={
        200: {"model": ContentResult, "description": IN_PROCESS_DESCRIPTION},
        409: {"description": "A human review without Temporal (needs ENABLE_TEMPORAL=true)"},
        422: {"description": "Invalid request (empty topic, too long, bad email...)"},
    },
)
async def create_content(body: ContentRequest, request: Request, state: StateDep) -> Any:
    """Start AIContentPipelineWorkflow: draft, review, publish everywhere or nowhere, notify.

    ENABLE_TEMPORAL=false: the same pipeline runs in this process (AI review only) and the
    answer is its result."""
    client = state.client
    if client is None:
        result = await state.in_process.execute(
            AIContentPipelineWorkflow.run, body, id=new_content_id()
        )
        return in_process_result(result)
    handle = await client.start_workflow(
        AIContentPipelineWorkflow.run,
        body,
        id=new_content_id(),
        task_queue=state.services.settings.temporal_task_queue,
    )
    return WorkflowAccepted(
        workflow_id=handle.id,
        status_url=str(request.url_for("get_content", content_id=handle.id)),
    ).model_dump(by_alias=True)


async def _pipeline(
    client: Client, content_id: str
) -> WorkflowHandle[AIContentPipelineWorkflow, ContentResult]:
    handle = client.get_workflow_handle_for(AIContentPipelineWorkflow.run, content_id)
    try:
        description = await handle.describe()
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no pipeline {content_id!r}") from None
        raise
    if description.workflow_type != WORKFLOW_NAME:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            f"workflow {content_id!r} is a {description.workflow_type}, not a content pipeline",
        )
    return handle


@router.get("/{content_id}", response_model=PipelineStatus, responses=_NOT_FOUND)
async def get_content(content_id: ContentId, client: ClientDep, state: StateDep) -> PipelineStatus:
    """The pipeline's stage, current draft, revision, review history and token usage."""
    handle = await _pipeline(client, content_id)
    try:
        return await handle.query(
            AIContentPipelineWorkflow.status,
            rpc_timeout=state.services.settings.temporal_answer_timeout,
        )
    except WorkflowQueryFailedError as error:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(error)) from error


@router.post(
    "/{content_id}/review",
    response_model=PipelineStatus,
    responses={
        400: {"description": "Unknown decision or no reviewer"},
        409: {"description": "The pipeline is not awaiting a review"},
        **_NOT_FOUND,
    },
)
async def review_content(
    content_id: ContentId, body: HumanReview, client: ClientDep, state: StateDep
) -> PipelineStatus:
    """A person's review of the draft: approve, reject or request_changes (with comments)."""
    handle = await _pipeline(client, content_id)
    try:
        reviewed: PipelineStatus = await handle.execute_update(
            SUBMIT_REVIEW,
            body,
            result_type=PipelineStatus,
            rpc_timeout=state.services.settings.temporal_answer_timeout,
        )
    except WorkflowUpdateFailedError as error:
        cause = error.cause
        wrong_stage = isinstance(cause, ApplicationError) and cause.type == NOT_AWAITING_REVIEW
        raise HTTPException(
            status.HTTP_409_CONFLICT if wrong_stage else status.HTTP_400_BAD_REQUEST,
            str(cause or error),
        ) from None
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            # It exists (described above) but has ended.
            raise HTTPException(
                status.HTTP_409_CONFLICT, f"content {content_id} is not awaiting a review: {error}"
            ) from None
        raise
    return reviewed
