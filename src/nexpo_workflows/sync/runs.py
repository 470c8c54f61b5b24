"""Start a dataset's sync, read how its current or last run and its change log are doing, and
reset its capture (gateway and CLI)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from datetime import datetime, timedelta

from pydantic import BaseModel
from temporalio.client import (
    Client,
    WorkflowExecutionDescription,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowQueryFailedError,
)
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from nexpo_workflows.errors import first_line
from nexpo_workflows.execution import InProcessRuns
from nexpo_workflows.providers import ProviderUnavailableError
from nexpo_workflows.services import Services
from nexpo_workflows.sync.capture import (
    CaptureLag,
    CaptureLostError,
    CaptureRefusedError,
    ChangeLog,
    change_log,
)
from nexpo_workflows.sync.datasets import (
    WATERMARKS_DATASET,
    DatasetConfigError,
    find_dataset,
    plan_dataset,
)
from nexpo_workflows.sync.models import CaptureMode, SyncInput, SyncPlan, SyncProgress, SyncResult
from nexpo_workflows.sync.workflow import (
    SYNC_VERIFICATION_FAILED,
    DataSyncWorkflow,
    sync_workflow_id,
)

# A query waits for a worker to answer: bounded, so a status read never hangs on a run whose
# workers are all down.
QUERY_TIMEOUT = timedelta(seconds=5)
logger = logging.getLogger(__name__)


class SyncAlreadyRunningError(Exception):
    def __init__(self, dataset: str) -> None:
        self.workflow_id = sync_workflow_id(dataset)
        super().__init__(f"a sync of {dataset} is running: workflow {self.workflow_id}")


class SyncNotRunningError(Exception):
    def __init__(self, dataset: str) -> None:
        self.workflow_id = sync_workflow_id(dataset)
        super().__init__(f"no sync of {dataset} is running (workflow {self.workflow_id})")


class SyncFailedError(Exception):
    """A run that ended with rows still differing on a target (its report), or otherwise."""

    def __init__(self, message: str, report: SyncResult | None) -> None:
        super().__init__(message)
        self.report = report


class CaptureView(BaseModel):
    """A log-captured dataset's change log on its source, as the status shows it."""

    # False: no run has created it yet, or `sync reset` dropped it.
    created: bool
    # What the log holds that the sync has not confirmed (None: not created, or unknown).
    lag: CaptureLag | None = None
    # The log no longer holds changes the sync has not confirmed (a slot invalidated by
    # max_slot_wal_keep_size): the dataset must be reset and copied anew.
    lost: bool = False
    # A log that is lost, or holds more than SYNC_SLOT_LAG_WARN_BYTES.
    warning: str | None = None
    # Why the log could not be read (the source down, a refusal); its state is unknown.
    error: str | None = None


class CaptureReset(BaseModel):
    dataset: str
    # Whether there was a change log to drop (the stored copy state is removed either way).
    dropped: bool


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
    # Log capture only (None: the dataset is polled).
    capture: CaptureView | None = None


def _plan(services: Services, dataset: str) -> SyncPlan:
    return plan_dataset(services.settings, list(services.providers), dataset)


def _change_log(services: Services, plan: SyncPlan) -> ChangeLog | None:
    """The dataset's change log (None: the dataset is polled). Raises CaptureRefusedError for
    a source with no change log here."""
    if plan.capture is not CaptureMode.LOG:
        return None
    source = services.providers[plan.source].sql_source()
    if source is None:
        raise DatasetConfigError(f"source {plan.source!r} is not a SQL provider")
    return change_log(source, find_dataset(services.settings, plan.dataset).source, plan.dataset)


async def _check_source(services: Services, input: SyncInput) -> None:
    log = _change_log(services, _plan(services, input.dataset))
    if log is not None:
        await log.check()


async def run_sync_in_process(
    runs: InProcessRuns, services: Services, input: SyncInput
) -> SyncResult:
    """The run of ``start_sync`` done to its end in this process (ENABLE_TEMPORAL=false),
    with the same checks first; raises SyncFailedError as ``sync_outcome`` does."""
    await _check_source(services, input)
    try:
        return await sync_outcome(
            runs.execute(DataSyncWorkflow.run, input, id=sync_workflow_id(input.dataset))
        )
    except WorkflowAlreadyStartedError:
        raise SyncAlreadyRunningError(input.dataset) from None


async def start_sync(
    client: Client, services: Services, input: SyncInput
) -> WorkflowHandle[DataSyncWorkflow, SyncResult]:
    """Raises UnknownDatasetError for an unknown dataset, DatasetConfigError for one that
    cannot run with the providers these services hold, CaptureRefusedError for a source its
    change log cannot capture (a server setting, a table without a key: what the run's first
    step would refuse), ProviderUnavailableError when the source cannot be asked,
    SyncAlreadyRunningError while a run of the dataset is going on."""
    await _check_source(services, input)
    try:
        return await client.start_workflow(
            DataSyncWorkflow.run,
            input,
            id=sync_workflow_id(input.dataset),
            task_queue=services.settings.temporal_task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
        )
    except WorkflowAlreadyStartedError:
        raise SyncAlreadyRunningError(input.dataset) from None


async def stop_sync(
    client: Client, services: Services, dataset: str
) -> WorkflowHandle[DataSyncWorkflow, SyncResult]:
    """Ask the dataset's run to end after its current batch (a follow run's way to end; a
    one-shot run ends early, its position recorded, and the next run goes on from there).
    Raises UnknownDatasetError for an unknown dataset, SyncNotRunningError when no run of it
    is going on."""
    find_dataset(services.settings, dataset)
    description = await _describe(client, dataset)
    if description is None or description.status is not WorkflowExecutionStatus.RUNNING:
        raise SyncNotRunningError(dataset)
    # No run id: after a continue-as-new the signal reaches the latest run.
    handle = client.get_workflow_handle_for(DataSyncWorkflow.run, sync_workflow_id(dataset))
    try:
        await handle.signal(DataSyncWorkflow.stop)
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:  # it ended meanwhile
            raise SyncNotRunningError(dataset) from None
        raise
    return handle


async def current_progress(client: Client, dataset: str) -> SyncProgress | None:
    """The progress of the dataset's latest run (after a continue-as-new, the new one)."""
    try:
        progress: SyncProgress = await client.get_workflow_handle(sync_workflow_id(dataset)).query(
            DataSyncWorkflow.progress, rpc_timeout=QUERY_TIMEOUT
        )
    except (RPCError, WorkflowQueryFailedError):
        return None
    return progress


async def sync_outcome(result: Awaitable[SyncResult]) -> SyncResult:
    """The run's result (a handle's follows continue-as-new); raises SyncFailedError when
    it failed."""
    try:
        return await result
    except WorkflowFailureError as error:
        cause = error.cause
        report = None
        if isinstance(cause, ApplicationError) and cause.type == SYNC_VERIFICATION_FAILED:
            report = SyncResult.model_validate(cause.details[0])
        raise SyncFailedError(first_line(cause or error), report) from error


async def capture_status(services: Services, dataset: str) -> CaptureView | None:
    """The dataset's change log: created or not, its lag, a warning when it is lost or holds
    more WAL than SYNC_SLOT_LAG_WARN_BYTES (also logged). None for a polled dataset, or one
    whose source these services do not hold."""
    try:
        log = _change_log(services, _plan(services, dataset))
    except DatasetConfigError:
        return None  # the run's own view says why it cannot run here
    except CaptureRefusedError as error:
        return CaptureView(created=False, error=str(error))
    if log is None:
        return None
    try:
        if not await log.exists():
            return CaptureView(created=False)
        lag = await log.lag()
    except CaptureLostError as error:
        return CaptureView(created=True, lost=True, warning=str(error))
    except (CaptureRefusedError, ProviderUnavailableError) as error:
        return CaptureView(created=False, error=str(error))
    view = CaptureView(created=True, lag=lag, lost=lag.state == "lost")
    limit = services.settings.sync_slot_lag_warn_bytes
    if view.lost:
        view.warning = (
            f"the change log of {dataset} lost changes the sync had not confirmed (the server "
            f"removed WAL past max_slot_wal_keep_size): run `nexpo-workflows sync reset "
            f"{dataset}`, then sync it again to copy the table anew"
        )
    elif lag.unit == "bytes" and lag.pending > limit:
        view.warning = (
            f"the change log of {dataset} holds {lag.pending} bytes of WAL on its source, more "
            f"than SYNC_SLOT_LAG_WARN_BYTES ({limit}): sync it, or run `nexpo-workflows sync "
            f"reset {dataset}` if it is no longer synced, or the source's disk fills"
        )
    if view.warning:
        logger.warning("%s", view.warning)
    return view


async def sync_status(client: Client, services: Services, dataset: str) -> SyncRunView | None:
    """The current or last run of the dataset and its change log; None when it never ran."""
    find_dataset(services.settings, dataset)
    description = await _describe(client, dataset)
    if description is None:
        return None
    state = description.status or WorkflowExecutionStatus.RUNNING
    view = SyncRunView(
        dataset=dataset,
        workflow_id=description.id,
        run_id=description.run_id,
        status=state.name.lower(),
        start_time=description.start_time,
        close_time=description.close_time,
    )
    view.capture = await capture_status(services, dataset)
    if state is WorkflowExecutionStatus.RUNNING:
        view.progress = await current_progress(client, dataset)
        return view
    latest = client.get_workflow_handle(
        description.id, run_id=description.run_id, result_type=SyncResult
    )
    try:
        view.result = await sync_outcome(latest.result())
    except SyncFailedError as failed:
        view.result, view.failure = failed.report, str(failed)
    view.progress = view.result.progress if view.result else None
    return view


async def _describe(client: Client, dataset: str) -> WorkflowExecutionDescription | None:
    """The dataset's current or last run; None when it never ran."""
    handle = client.get_workflow_handle(sync_workflow_id(dataset), result_type=SyncResult)
    try:
        return await handle.describe()
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            return None
        raise


async def reset_capture(client: Client, services: Services, dataset: str) -> CaptureReset:
    """Drop the dataset's change log (PostgreSQL: its replication slot and publication, so the
    source no longer keeps WAL for it; SQLite: its triggers and change rows) and its stored
    copy state, so the next run copies the table anew. Raises SyncAlreadyRunningError while a
    run of the dataset is going on (it reads the log), DatasetConfigError for a polled
    dataset."""
    plan = _plan(services, dataset)
    log = _change_log(services, plan)
    if log is None:
        raise DatasetConfigError(
            f"{dataset} is polled (capture: poll) and has no change log; `sync run --full` "
            "syncs every row again"
        )
    description = await _describe(client, dataset)
    if description is not None and description.status is WorkflowExecutionStatus.RUNNING:
        raise SyncAlreadyRunningError(dataset)
    dropped = await log.drop()
    # The copy state names a position in the dropped log: without it, the next run starts a
    # new log and copies the table.
    await services.providers[plan.source].delete_records(WATERMARKS_DATASET, [dataset])
    logger.info("sync %s: change log %s", dataset, "dropped" if dropped else "was not there")
    return CaptureReset(dataset=dataset, dropped=dropped)
