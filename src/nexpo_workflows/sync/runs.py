"""Start a dataset's sync and read how its current or last run is doing (gateway and CLI)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowQueryFailedError,
)
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from nexpo_workflows.config import Settings
from nexpo_workflows.errors import first_line
from nexpo_workflows.providers import enabled_provider_names
from nexpo_workflows.sync.datasets import find_dataset, plan_dataset
from nexpo_workflows.sync.models import SyncInput, SyncProgress, SyncResult
from nexpo_workflows.sync.workflow import (
    SYNC_VERIFICATION_FAILED,
    DataSyncWorkflow,
    sync_workflow_id,
)

# A query waits for a worker to answer: bounded, so a status read never hangs on a run whose
# workers are all down.
QUERY_TIMEOUT = timedelta(seconds=5)


class SyncAlreadyRunningError(Exception):
    def __init__(self, dataset: str) -> None:
        self.workflow_id = sync_workflow_id(dataset)
        super().__init__(f"a sync of {dataset} is running: workflow {self.workflow_id}")


class SyncFailedError(Exception):
    """A run that ended with rows still differing on a target (its report), or otherwise."""

    def __init__(self, message: str, report: SyncResult | None) -> None:
        super().__init__(message)
        self.report = report


class SyncRunView(BaseModel):
    dataset: str
    workflow_id: str
    run_id: str
    # running, completed, failed, terminated, ...
    status: str
    start_time: datetime
    close_time: datetime | None = None
    # None while no worker answers the query of a running run.
    progress: SyncProgress | None = None
    result: SyncResult | None = None
    failure: str | None = None


async def start_sync(
    client: Client, settings: Settings, input: SyncInput
) -> WorkflowHandle[DataSyncWorkflow, SyncResult]:
    """Raises UnknownDatasetError for an unknown dataset, DatasetConfigError for one that
    cannot run with the providers these settings enable, SyncAlreadyRunningError while a run
    of the dataset is going on."""
    plan_dataset(settings, enabled_provider_names(settings), input.dataset)
    try:
        return await client.start_workflow(
            DataSyncWorkflow.run,
            input,
            id=sync_workflow_id(input.dataset),
            task_queue=settings.temporal_task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
        )
    except WorkflowAlreadyStartedError:
        raise SyncAlreadyRunningError(input.dataset) from None


async def current_progress(client: Client, dataset: str) -> SyncProgress | None:
    """The progress of the dataset's latest run (after a continue-as-new, the new one)."""
    try:
        progress: SyncProgress = await client.get_workflow_handle(sync_workflow_id(dataset)).query(
            DataSyncWorkflow.progress, rpc_timeout=QUERY_TIMEOUT
        )
    except (RPCError, WorkflowQueryFailedError):
        return None
    return progress


async def sync_outcome(handle: WorkflowHandle[Any, SyncResult]) -> SyncResult:
    """The run's result, following continue-as-new; raises SyncFailedError when it failed."""
    try:
        return await handle.result()
    except WorkflowFailureError as error:
        cause = error.cause
        report = None
        if isinstance(cause, ApplicationError) and cause.type == SYNC_VERIFICATION_FAILED:
            report = SyncResult.model_validate(cause.details[0])
        raise SyncFailedError(first_line(cause or error), report) from error


async def sync_status(client: Client, settings: Settings, dataset: str) -> SyncRunView | None:
    """The current or last run of the dataset; None when it never ran."""
    find_dataset(settings, dataset)
    handle = client.get_workflow_handle(sync_workflow_id(dataset), result_type=SyncResult)
    try:
        description = await handle.describe()
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            return None
        raise
    state = description.status or WorkflowExecutionStatus.RUNNING
    view = SyncRunView(
        dataset=dataset,
        workflow_id=description.id,
        run_id=description.run_id,
        status=state.name.lower(),
        start_time=description.start_time,
        close_time=description.close_time,
    )
    if state is WorkflowExecutionStatus.RUNNING:
        view.progress = await current_progress(client, dataset)
        return view
    latest = client.get_workflow_handle(
        description.id, run_id=description.run_id, result_type=SyncResult
    )
    try:
        view.result = await sync_outcome(latest)
    except SyncFailedError as failed:
        view.result, view.failure = failed.report, str(failed)
    view.progress = view.result.progress if view.result else None
    return view
