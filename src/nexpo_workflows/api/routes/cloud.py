"""/api/cloud: multi-cloud operations started as workflows."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Request, status
from pydantic import BaseModel
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowUpdateFailedError
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from nexpo_workflows.api.deps import (
    IN_PROCESS_DESCRIPTION,
    ClientDep,
    GatewayState,
    StateDep,
    in_process_result,
)
from nexpo_workflows.failover.models import (
    FailoverInput,
    FailoverState,
    HoldInput,
    RoutingRecord,
    SetActiveSideInput,
    postgres_refusal,
)
from nexpo_workflows.failover.routing import RoutingTable, routing_store
from nexpo_workflows.failover.workflow import FailoverWorkflow
from nexpo_workflows.provisioning.models import (
    DeprovisionInput,
    ProvisioningResult,
    ProvisionInput,
)
from nexpo_workflows.provisioning.workflows import (
    DeprovisionResourcesWorkflow,
    ProvisionResourcesWorkflow,
)
from nexpo_workflows.replication.models import ReplicateInput, ReplicateResult
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
    responses={
        200: {"model": ReplicateResult, "description": IN_PROCESS_DESCRIPTION},
        422: {"description": "Unknown store or invalid key"},
        503: {"description": "ENABLE_TEMPORAL=false: a copy failed (the message names it)"},
    },
)
async def replicate(body: ReplicateInput, request: Request, state: StateDep) -> Any:
    """Copy an object from one store to the others (or to `targets`), verified.

    ENABLE_TEMPORAL=false: the copies are made in this process and the answer is the result."""
    enabled = set(state.services.stores)
    unknown = sorted({body.source, *(body.targets or [])} - enabled)
    if unknown:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"stores {unknown} are not enabled; enabled: {sorted(enabled)}",
        )
    workflow_id = f"replicate-{uuid.uuid4()}"
    if state.client is None:
        result = await state.in_process.execute(ReplicateObjectWorkflow.run, body, id=workflow_id)
        return in_process_result(result)
    handle = await state.client.start_workflow(
        ReplicateObjectWorkflow.run,
        body,
        id=workflow_id,
        task_queue=state.services.settings.temporal_task_queue,
    )
    return accepted(request, handle.id)


def tenant_workflow_id(tenant_id: str) -> str:
    # One id for both directions: a tenant is never provisioned and removed at the same time.
    return f"tenant-resources-{tenant_id}"


async def _start_tenant_workflow(
    request: Request, state: GatewayState, run: Any, arg: Any, tenant_id: str
) -> Any:
    try:
        if state.client is None:
            result = await state.in_process.execute(run, arg, id=tenant_workflow_id(tenant_id))
            return in_process_result(result)
        handle = await state.client.start_workflow(
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
    responses={
        200: {"model": ProvisioningResult, "description": IN_PROCESS_DESCRIPTION},
        409: {"description": "A workflow for this tenant is running"},
    },
)
async def provision_tenant(tenant_id: TenantPath, request: Request, state: StateDep) -> Any:
    """Provision the tenant's resources in every enabled store and SQL database (saga).

    ENABLE_TEMPORAL=false: the saga runs in this process and the answer is its result."""
    return await _start_tenant_workflow(
        request,
        state,
        ProvisionResourcesWorkflow.run,
        ProvisionInput(tenant_id=tenant_id),
        tenant_id,
    )


@router.delete(
    "/tenants/{tenant_id}",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=WorkflowAccepted,
    responses={
        200: {"model": ProvisioningResult, "description": IN_PROCESS_DESCRIPTION},
        409: {"description": "A workflow for this tenant is running"},
    },
)
async def deprovision_tenant(tenant_id: TenantPath, request: Request, state: StateDep) -> Any:
    """Remove everything provisioned for the tenant (safe to repeat).

    ENABLE_TEMPORAL=false: runs in this process and the answer is its result."""
    return await _start_tenant_workflow(
        request,
        state,
        DeprovisionResourcesWorkflow.run,
        DeprovisionInput(tenant_id=tenant_id),
        tenant_id,
    )


def failover_workflow_id(service: str) -> str:
    return f"failover-{service}"


ServicePath = Annotated[str, Path(pattern=r"^[A-Za-z0-9._-]+$", max_length=200)]


class FailoverStatus(BaseModel):
    service: str
    routing: RoutingRecord | None
    # None when no monitor runs for the service.
    monitor: FailoverState | None


@router.post(
    "/failover",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=WorkflowAccepted,
    responses={
        409: {"description": "A monitor for this service is running"},
        422: {
            "description": "Invalid input, a probe interval out of bounds, a URL target "
            "whose host FAILOVER_PROBE_ALLOWED_HOSTS does not allow, or PostgreSQL targets "
            "of a service POSTGRES_FAILOVER_SERVICE does not name"
        },
    },
)
async def start_failover_monitor(
    body: FailoverInput, request: Request, client: ClientDep, state: StateDep
) -> Any:
    """Start the long-running failover monitor of a service (one per service)."""
    settings = state.services.settings
    refusals = [
        refusal
        for target in (body.primary, body.secondary)
        if (refusal := target.refusal(settings.failover_probe_allowed_hosts)) is not None
    ]
    if body.postgres and (
        refusal := postgres_refusal(
            body.service,
            settings.postgres_failover_service,
            settings.postgres_standby_url is not None,
        )
    ):
        refusals.append(refusal)
    if refusals:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "; ".join(refusals))
    try:
        handle = await client.start_workflow(
            FailoverWorkflow.run,
            body,
            id=failover_workflow_id(body.service),
            task_queue=state.services.settings.temporal_task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
        )
    except WorkflowAlreadyStartedError:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            {
                "message": f"a monitor of {body.service} runs",
                "workflowId": failover_workflow_id(body.service),
            },
        ) from None
    return accepted(request, handle.id)


@router.get("/failover/{service}", response_model=FailoverStatus)
async def failover_status(
    service: ServicePath, client: ClientDep, state: StateDep
) -> FailoverStatus:
    """The durable routing record, and the monitor's state when one runs."""
    table = RoutingTable(routing_store(state.services.stores))
    monitor: FailoverState | None = None
    handle = client.get_workflow_handle(failover_workflow_id(service))
    try:
        if (await handle.describe()).status == WorkflowExecutionStatus.RUNNING:
            monitor = await handle.query(
                "state",
                result_type=FailoverState,
                rpc_timeout=state.services.settings.temporal_answer_timeout,
            )
    except RPCError as error:
        if error.status != RPCStatusCode.NOT_FOUND:
            raise
    return FailoverStatus(service=service, routing=await table.read(service), monitor=monitor)


_MONITOR_UPDATE_RESPONSES: dict[int | str, dict[str, Any]] = {
    404: {"description": "No monitor runs for this service"},
    422: {"description": "Invalid input or missing reason"},
}


async def _update_monitor(
    service: str, update: str, body: BaseModel, client: Client, state: GatewayState
) -> FailoverState:
    """Run one of the monitor's updates; refused: 422, no monitor: 404."""
    handle = client.get_workflow_handle(failover_workflow_id(service))
    try:
        updated: FailoverState = await handle.execute_update(
            update,
            body,
            result_type=FailoverState,
            rpc_timeout=state.services.settings.temporal_answer_timeout,
        )
    except WorkflowUpdateFailedError as error:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(error.cause)) from None
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no monitor of {service}") from None
        raise
    return updated


@router.post(
    "/failover/{service}/active-side",
    response_model=FailoverState,
    responses=_MONITOR_UPDATE_RESPONSES,
)
async def set_active_side(
    service: ServicePath, body: SetActiveSideInput, client: ClientDep, state: StateDep
) -> FailoverState:
    """Manual promote (side=secondary) or failback (side=primary), with a reason; with
    `hold: true` the side is held in the same step (no automatic switch until released)."""
    return await _update_monitor(service, "set_active_side", body, client, state)


@router.post(
    "/failover/{service}/hold", response_model=FailoverState, responses=_MONITOR_UPDATE_RESPONSES
)
async def hold_failover(
    service: ServicePath, body: HoldInput, client: ClientDep, state: StateDep
) -> FailoverState:
    """Keep the active side as it is (e.g. after a manual promotion): the monitor switches no
    side on its own until released; its state shows `held`."""
    return await _update_monitor(service, "hold", body, client, state)


@router.post(
    "/failover/{service}/release",
    response_model=FailoverState,
    responses=_MONITOR_UPDATE_RESPONSES,
)
async def release_failover(
    service: ServicePath, body: HoldInput, client: ClientDep, state: StateDep
) -> FailoverState:
    """End a hold: the monitor switches sides on its probes again."""
    return await _update_monitor(service, "release", body, client, state)
