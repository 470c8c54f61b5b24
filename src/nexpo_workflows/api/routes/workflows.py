"""Status, result or failure of any workflow this package defines."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, HTTPException, Path, status
from pydantic import BaseModel
from temporalio.client import WorkflowExecutionStatus, WorkflowFailureError
from temporalio.service import RPCError, RPCStatusCode

from nexpo_workflows import registry
from nexpo_workflows.api.deps import ClientDep

router = APIRouter(prefix="/api/workflows", tags=["workflows"])


class WorkflowStatus(BaseModel):
    workflow_id: str
    run_id: str
    workflow_type: str
    status: str
    start_time: datetime
    close_time: datetime | None = None
    result: Any = None
    failure: str | None = None


@router.get(
    "/{workflow_id}",
    response_model=WorkflowStatus,
    responses={404: {"description": "No workflow of this package has that id"}},
)
async def get_workflow(
    client: ClientDep,
    workflow_id: str = Path(min_length=1, max_length=1000),
) -> WorkflowStatus:
    handle = client.get_workflow_handle(workflow_id)
    try:
        description = await handle.describe()
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no workflow {workflow_id!r}") from None
        raise
    if description.workflow_type not in registry.WORKFLOW_NAMES:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            f"workflow {workflow_id!r} is a {description.workflow_type}, not one of this package's",
        )
    state = description.status or WorkflowExecutionStatus.RUNNING
    answer = WorkflowStatus(
        workflow_id=workflow_id,
        run_id=description.run_id,
        workflow_type=description.workflow_type,
        status=state.name.lower(),
        start_time=description.start_time,
        close_time=description.close_time,
    )
    if state is WorkflowExecutionStatus.COMPLETED:
        answer.result = await handle.result(follow_runs=False)
    elif state is not WorkflowExecutionStatus.RUNNING:
        try:
            await handle.result(follow_runs=False)
        except WorkflowFailureError as error:
            answer.failure = _failure_text(error)
    return answer


def _failure_text(error: WorkflowFailureError) -> str:
    messages = []
    cause: BaseException | None = error.cause
    while cause is not None:
        messages.append(str(cause) or type(cause).__name__)
        cause = cause.__cause__
    return ": ".join(messages)
