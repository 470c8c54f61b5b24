"""/api/cloud: multi-cloud operations started as workflows."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Request, status
from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.exceptions import WorkflowAlreadyStartedError

from nexpo_workflows.api.deps import ClientDep, GatewayState, StateDep
from nexpo_workflows.provisioning.models import DeprovisionInput, ProvisionInput
from nexpo_workflows.provisioning.workflows import (
    DeprovisionResourcesWorkflow,
    ProvisionResourcesWorkflow,
)
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


def tenant_workflow_id(tenant_id: str) -> str:
    # One id for both directions: a tenant is never provisioned and removed at the same time.
    return f"tenant-resources-{tenant_id}"


async def _start_tenant_workflow(
    request: Request, client: Client, state: GatewayState, run: Any, arg: Any, tenant_id: str
) -> dict[str, Any]:
    try:
        handle = await client.start_workflow(
            run,
            arg,
            id=tenant_workflow_id(tenant_id),
            task_queue=state.services.settings.temporal_task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
        )
    except WorkflowAlreadyStartedError:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            {
                "message": f"tenant {tenant_id} is being provisioned or deprovisioned",
                "workflowId": tenant_workflow_id(tenant_id),
            },
        ) from None
    return accepted(request, handle.id)


TenantPath = Annotated[str, Path(pattern=r"^[a-z0-9-]{3,40}$")]


@router.put(
    "/tenants/{tenant_id}",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=WorkflowAccepted,
    responses={409: {"description": "A workflow for this tenant is running"}},
)
async def provision_tenant(
    tenant_id: TenantPath, request: Request, client: ClientDep, state: StateDep
) -> Any:
    """Provision the tenant's resources in every enabled store and SQL database (saga)."""
    return await _start_tenant_workflow(
        request,
        client,
        state,
        ProvisionResourcesWorkflow.run,
        ProvisionInput(tenant_id=tenant_id),
        tenant_id,
    )


@router.delete(
    "/tenants/{tenant_id}",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=WorkflowAccepted,
    responses={409: {"description": "A workflow for this tenant is running"}},
)
async def deprovision_tenant(
    tenant_id: TenantPath, request: Request, client: ClientDep, state: StateDep
) -> Any:
    """Remove everything provisioned for the tenant (safe to repeat)."""
    return await _start_tenant_workflow(
        request,
        client,
        state,
        DeprovisionResourcesWorkflow.run,
        DeprovisionInput(tenant_id=tenant_id),
        tenant_id,
    )
