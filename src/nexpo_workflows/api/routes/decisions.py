"""/api/decisions: the AI decision workflow (start, status, human approval)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Request, status

from nexpo_workflows.api.deps import (
    IN_PROCESS_DESCRIPTION,
    ClientDep,
    StateDep,
    in_process_result,
)
from nexpo_workflows.decisions.models import (
    REQUEST_ID_PATTERN,
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
from nexpo_workflows.users.service import WorkflowAccepted

router = APIRouter(prefix="/api/decisions", tags=["decisions"])

RequestId = Annotated[str, Path(min_length=1, max_length=100, pattern=REQUEST_ID_PATTERN)]
_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"description": "No decision for this request id"}
}


def _service(client: ClientDep, state: StateDep) -> DecisionService:
    settings = state.services.settings
    return DecisionService(client, settings.temporal_task_queue, settings.temporal_answer_timeout)


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=WorkflowAccepted,
    responses={
        200: {"model": DecisionResult, "description": IN_PROCESS_DESCRIPTION},
        409: {"description": "This request id already has a decision"},
    },
)
async def create_decision(body: DecisionRequest, request: Request, state: StateDep) -> Any:
    """Start AIDecisionWorkflow: the model chooses auto_reply, escalate or refund.

    ENABLE_TEMPORAL=false: the same decision runs in this process and the answer is its
    result; a choice that needs a person's approval is escalated instead (an approval needs
    Temporal to wait for it)."""
    client = state.client
    if client is None:
        result = await state.in_process.execute(
            AIDecisionWorkflow.run, body, id=decision_workflow_id(body.request_id)
        )
        return in_process_result(result)
    try:
        handle = await _service(client, state).start(body)
    except DecisionExistsError as error:
        raise HTTPException(
            status.HTTP_409_CONFLICT, {"message": str(error), "workflowId": error.workflow_id}
        ) from None
    return WorkflowAccepted(
        workflow_id=handle.id,
        status_url=str(request.url_for("get_decision", request_id=body.request_id)),
    ).model_dump(by_alias=True)


@router.get("/{request_id}", response_model=DecisionStatus, responses=_NOT_FOUND)
async def get_decision(request_id: RequestId, client: ClientDep, state: StateDep) -> Any:
    """Stage, the model's choice, its validation, the approval and the result."""
    try:
        return await _service(client, state).status(request_id)
    except DecisionNotFoundError as error:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(error)) from None


@router.post(
    "/{request_id}/approval",
    response_model=DecisionStatus,
    responses={
        **_NOT_FOUND,
        409: {"description": "Not awaiting approval, or no approver named"},
    },
)
async def approve_decision(
    request_id: RequestId, body: ApprovalInput, client: ClientDep, state: StateDep
) -> Any:
    """A person approves (`approved: true`) or rejects a risky choice; rejected: escalated."""
    try:
        return await _service(client, state).approve(request_id, body)
    except DecisionNotFoundError as error:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(error)) from None
    except ApprovalRefusedError as error:
        raise HTTPException(status.HTTP_409_CONFLICT, str(error)) from None
