"""``cloud``: replication, tenant provisioning and the failover monitor."""

from __future__ import annotations

import json
import uuid
from typing import Any

import typer
from pydantic import BaseModel, ValidationError
from rich.table import Table
from temporalio.client import (
    WorkflowQueryFailedError,
    WorkflowUpdateFailedError,
)
from temporalio.service import RPCError, RPCStatusCode

from nexpo_workflows.cli._common import (
    app,
    command_settings,
    fail,
    in_process,
    input_errors,
    out,
    require_temporal,
    result_or_details,
    run_async,
)
from nexpo_workflows.client import connect
from nexpo_workflows.telemetry import create_runtime

cloud_app = typer.Typer(help="Multi-cloud operations.", no_args_is_help=True)
app.add_typer(cloud_app, name="cloud")


@cloud_app.command("replicate")
def cloud_replicate(
    key: str = typer.Argument(..., help="The object's key."),
    source: str = typer.Option(..., help="The store that holds it (local, s3, azure, gcs)."),
    target: list[str] | None = typer.Option(None, help="A target store (repeat); default: all."),
) -> None:
    """Copy an object from one store to the others and verify every copy."""
    from nexpo_workflows.replication.models import ReplicateInput, ReplicateResult
    from nexpo_workflows.replication.workflow import ReplicateObjectWorkflow

    settings = command_settings()
    input = ReplicateInput(key=key, source=source, targets=target or None)
    workflow_id = f"replicate-{uuid.uuid4()}"

    async def replicate() -> ReplicateResult:
        if not settings.enable_temporal:
            async with in_process(settings) as (runs, _):
                return await result_or_details(
                    runs.execute(ReplicateObjectWorkflow.run, input, id=workflow_id),
                    ReplicateResult,
                )
        client = await connect(settings, runtime=create_runtime(""))
        return await result_or_details(
            client.execute_workflow(
                ReplicateObjectWorkflow.run,
                input,
                id=workflow_id,
                task_queue=settings.temporal_task_queue,
            ),
            ReplicateResult,
        )

    result = run_async(replicate())
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

    settings = command_settings()

    async def execute(run: Any, arg: Any) -> ProvisioningResult:
        workflow_id = tenant_workflow_id(tenant_id)
        if not settings.enable_temporal:
            async with in_process(settings) as (runs, _):
                return await result_or_details(
                    runs.execute(run, arg, id=workflow_id), ProvisioningResult
                )
        client = await connect(settings, runtime=create_runtime(""))
        return await result_or_details(
            client.execute_workflow(
                run, arg, id=workflow_id, task_queue=settings.temporal_task_queue
            ),
            ProvisioningResult,
        )

    async def run() -> ProvisioningResult:
        if deprovision:
            return await execute(
                DeprovisionResourcesWorkflow.run, DeprovisionInput(tenant_id=tenant_id)
            )
        return await execute(ProvisionResourcesWorkflow.run, ProvisionInput(tenant_id=tenant_id))

    try:
        result = run_async(run())
    except ValidationError as error:
        fail(f"invalid tenant id: {input_errors(error)}", 2)
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

    settings = command_settings()

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

    record, monitor = run_async(status())
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

    settings = command_settings()
    require_temporal(settings, f"cloud {command}")

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
            fail(f"refused: {error.cause}", 2)
        except RPCError as error:
            if error.status != RPCStatusCode.NOT_FOUND:
                raise
            fail(f"no monitor of {service}", 1)
        return state

    state = run_async(call())
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
