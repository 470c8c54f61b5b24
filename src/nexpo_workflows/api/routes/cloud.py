"""/api/cloud: multi-cloud operations started as workflows."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, HTTPException, Request, status

from nexpo_workflows.api.deps import ClientDep, StateDep
from nexpo_workflows.replication.models import ReplicateInput
from nexpo_workflows.replication.workflow import ReplicateObjectWorkflow
from nexpo_workflows.users.service import WorkflowAccepted

router = APIRouter(prefix="/api/cloud", tags=["cloud"])


def accepted(request: Request, workflow_id: str) -> dict[str, Any]:
    return WorkflowAccepted(
        workflow_id=workflow_id,
        status_url=str(request.url_for("get_workflow", workflow_id=workflow_id)),
    ).model_dump(by_alias=True)


@router.post(
    "/replicate",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=WorkflowAccepted,
    responses={422: {"description": "Unknown store or invalid key"}},
)
async def replicate(
    body: ReplicateInput, request: Request, client: ClientDep, state: StateDep
) -> Any:
    """Copy an object from one store to the others (or to `targets`), verified."""
    enabled = set(state.services.stores)
    unknown = sorted({body.source, *(body.targets or [])} - enabled)
    if unknown:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"stores {unknown} are not enabled; enabled: {sorted(enabled)}",
        )
    handle = await client.start_workflow(
        ReplicateObjectWorkflow.run,
        body,
        id=f"replicate-{uuid.uuid4()}",
        task_queue=state.services.settings.temporal_task_queue,
    )
    return accepted(request, handle.id)
