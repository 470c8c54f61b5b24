"""DataSyncWorkflow: detect, validate, sync and verify a dataset batch by batch.

A dataset is read from its source's change log (after a first copy of the table), or by
polling a version column. The position (the log's confirmed position, the copy's last key, the
watermark) moves only past a verified batch, so a run interrupted anywhere (a worker killed, a
target down) resumes from the last verified batch: every step is idempotent and a batch is
rewritten whole, hence no duplicate and no gap. Runs continue as new every
``batches_per_run`` batches, so history stays bounded whatever the number of rows.

A follow run (``SyncInput.follow``) does not end when it has caught up: it reads the log (or
polls) with no end position, waits ``follow_poll_seconds`` whenever nothing is new, and applies
each micro-batch with the same steps. Its empty looks count toward ``batches_per_run`` too, so
an idle follow run's history stays bounded as well. The ``stop`` signal ends any run after its
current batch: the position is recorded as verified (``record_position``) and the run returns
``stopped``.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, WorkflowAlreadyStartedError

with workflow.unsafe.imports_passed_through():
    from nexpo_workflows import execution
    from nexpo_workflows.retries import PLAN_RETRY
    from nexpo_workflows.sync.models import (
        BatchInput,
        CaptureMode,
        CaptureStart,
        ChangeBatch,
        DetectChangesInput,
        LoadWatermarkInput,
        OpenCaptureInput,
        PlanSyncInput,
        PositionKind,
        RecordPositionInput,
        SyncBatchInput,
        SyncInput,
        SyncPhase,
        SyncPlan,
        SyncProgress,
        SyncResult,
        SyncStatus,
        TargetMismatch,
        TargetWrite,
        ValidationOutcome,
        VerifyInput,
        VerifyOutcome,
        Watermark,
    )
    from nexpo_workflows.workflow_errors import raise_refusal

SYNC_VERIFICATION_FAILED = "SyncVerificationFailed"
# Ids named in a failure report: enough to find the rows, bounded so the report stays small.
REPORTED_IDS = 100
STEP_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=500),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=10),
    non_retryable_error_types=["BadDatasetConfig"],
)
STEP_TIMEOUT = timedelta(minutes=5)
# Steps heartbeat every 2 s: a killed worker's step is retried elsewhere within this.
HEARTBEAT_TIMEOUT = timedelta(seconds=10)
# Runs started since carry this patch: their steps are local activities.
LOCAL_STEPS_PATCH = "sync-local-steps"


def sync_workflow_id(dataset: str) -> str:
    """The one id every run of a dataset has: the server refuses a second one while the
    first runs, so two runs of a dataset never overlap."""
    return f"sync-{dataset}"


@workflow.defn(name="DataSyncWorkflow")
class DataSyncWorkflow:
    @workflow.init
    def __init__(self, input: SyncInput) -> None:
        self._progress = (
            input.carry.model_copy(deep=True)
            if input.carry
            else SyncProgress(dataset=input.dataset)
        )
        self._plan: SyncPlan | None = None
        self._local: bool | None = None
        self._stop = False

    @workflow.query(name="progress")
    def progress(self) -> SyncProgress:
        return self._progress

    @workflow.signal(name="stop")
    def stop(self) -> None:
        """End the run after its current batch, its position recorded (a follow run's end)."""
        self._stop = True

    @workflow.run
    async def run(self, input: SyncInput) -> SyncResult:
        if execution.workflow_id() != sync_workflow_id(input.dataset):
            return await self._run_as_the_dataset_run(input)
        if input.follow and not execution.durable():
            raise execution.needs_temporal("a follow run (it goes on until stopped)")
        try:
            plan: SyncPlan = await execution.execute_activity(
                "plan_sync",
                PlanSyncInput(dataset=input.dataset),
                local=True,
                result_type=SyncPlan,
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=PLAN_RETRY,
            )
        except ActivityError as error:
            raise_refusal(error)
        self._plan = plan
        progress = self._progress
        if input.carry is None and plan.capture is CaptureMode.LOG and not input.audit:
            start: CaptureStart = await self._step(
                "open_capture", OpenCaptureInput(plan=plan, full=input.full), CaptureStart
            )
            progress.watermark = start.after
            progress.until = None if input.follow else start.until
        elif input.carry is None and not (input.full or input.audit):
            progress.watermark = await self._step(
                "load_watermark", LoadWatermarkInput(plan=plan), Watermark | None
            )
        progress.following = input.follow
        batches_this_run = 0
        while True:
            if self._stop:
                return await self._stopped(plan, record=not input.audit)
            # A run in this process has no history to bound: it goes on in one piece.
            if execution.durable() and (
                batches_this_run >= plan.batches_per_run or execution.continue_as_new_suggested()
            ):
                progress.runs += 1
                workflow.continue_as_new(input.model_copy(update={"carry": progress}))
            progress.phase = SyncPhase.DETECTING
            batch: ChangeBatch = await self._step(
                "detect_changes",
                DetectChangesInput(
                    plan=plan,
                    after=progress.watermark,
                    until=progress.until,
                    record=not input.audit,
                ),
                ChangeBatch,
            )
            if input.follow:
                progress.lag_seconds = batch.lag_seconds
            if batch.count == 0:
                if not input.follow:
                    break
                await self._idle(plan, batch)
                batches_this_run += 1
                continue
            await self._sync_batch(plan, batch, audit=input.audit)
            batches_this_run += 1
        progress.phase = SyncPhase.DONE
        execution.logger().info(
            "sync %s: %d rows synced, %d quarantined, %d repaired",
            input.dataset,
            progress.rows_synced,
            progress.rows_quarantined,
            progress.rows_repaired,
        )
        return SyncResult(dataset=input.dataset, status=SyncStatus.COMPLETED, progress=progress)

    async def _idle(self, plan: SyncPlan, batch: ChangeBatch) -> None:
        """A follow run caught up: look again after the poll interval, or at once when
        stopped."""
        progress = self._progress
        if batch.after is not None and batch.after.kind is PositionKind.LOG:
            # The copy of the table is done: the next look starts in the log, where this one
            # did (already confirmed), not in the copy again.
            progress.watermark = batch.after
        progress.phase = SyncPhase.WAITING
        with contextlib.suppress(TimeoutError):
            await workflow.wait_condition(
                lambda: self._stop, timeout=timedelta(seconds=plan.follow_poll_seconds)
            )

    async def _stopped(self, plan: SyncPlan, *, record: bool) -> SyncResult:
        """End on ``stop``: what the last batch verified is recorded (the log confirmed up to
        it; not in an audit), so the next run starts right after it."""
        progress = self._progress
        if record and progress.watermark is not None:
            await self._step(
                "record_position",
                RecordPositionInput(plan=plan, after=progress.watermark),
                type(None),
            )
        progress.phase = SyncPhase.DONE
        execution.logger().info(
            "sync %s: stopped; %d rows synced", plan.dataset, progress.rows_synced
        )
        return SyncResult(dataset=plan.dataset, status=SyncStatus.STOPPED, progress=progress)

    async def _run_as_the_dataset_run(self, input: SyncInput) -> SyncResult:
        """A scheduled start (its id has the schedule's suffix): run under the dataset's one
        id, or skip when a run of the dataset is already going on."""
        try:
            result: SyncResult = await workflow.execute_child_workflow(
                DataSyncWorkflow.run,
                input,
                id=sync_workflow_id(input.dataset),
                parent_close_policy=workflow.ParentClosePolicy.TERMINATE,
            )
        except WorkflowAlreadyStartedError:
            execution.logger().info("sync %s: a run is in progress; skipped", input.dataset)
            return SyncResult(
                dataset=input.dataset, status=SyncStatus.SKIPPED, progress=self._progress
            )
        return result

    def _local_steps(self) -> bool:
        """Whether a batch's validation, writes and verification run as local activities, on
        the worker running the workflow task, without a round trip through the server for each
        (~25 ms here, as long as the step itself). Detection stays an activity: the workflow
        task ends when it is scheduled, so each batch's steps are recorded in history and its
        progress is seen batch by batch. Runs recorded before this keep their activities."""
        if self._local is None:
            self._local = execution.durable() and workflow.patched(LOCAL_STEPS_PATCH)
        return self._local

    async def _step(
        self, activity: str, arg: Any, result_type: Any, *, batch_step: bool = False
    ) -> Any:
        assert self._plan is not None
        local = batch_step and self._local_steps()
        options: dict[str, Any] = {
            "start_to_close_timeout": STEP_TIMEOUT,
            "schedule_to_close_timeout": timedelta(seconds=self._plan.step_deadline_seconds),
            "retry_policy": STEP_RETRY,
        }
        if not local:
            # A local step is retried by the worker running it; a killed worker's workflow task
            # times out instead, and the next worker replays and runs the step again.
            options["heartbeat_timeout"] = HEARTBEAT_TIMEOUT
        try:
            return await execution.execute_activity(
                activity, arg, local=local, result_type=result_type, **options
            )
        except ActivityError as error:
            raise_refusal(error)

    async def _write(
        self,
        plan: SyncPlan,
        batch: ChangeBatch,
        skip: list[str],
        ids_by_target: dict[str, list[str] | None],
    ) -> None:
        """One bulk write per target, in parallel: a retry repeats only the failed target."""
        await asyncio.gather(
            *(
                self._step(
                    "sync_to_providers",
                    SyncBatchInput(
                        plan=plan, batch=batch, target=target, skip_ids=skip, only_ids=ids
                    ),
                    TargetWrite,
                    batch_step=True,
                )
                for target, ids in ids_by_target.items()
            )
        )

    async def _sync_batch(self, plan: SyncPlan, batch: ChangeBatch, *, audit: bool) -> None:
        progress = self._progress
        progress.phase = SyncPhase.VALIDATING
        validation: ValidationOutcome
        if batch.checked is not None:  # detection read and checked it already
            validation, batch = batch.checked, batch.model_copy(update={"checked": None})
        else:
            validation = await self._step(
                "validate_data",
                BatchInput(plan=plan, batch=batch),
                ValidationOutcome,
                batch_step=True,
            )
        skip = validation.invalid_ids
        by_content = audit and plan.capture is CaptureMode.LOG
        if not audit:
            progress.phase = SyncPhase.SYNCING
            await self._write(plan, batch, skip, dict.fromkeys(plan.targets))
        progress.phase = SyncPhase.VERIFYING
        mismatches = await self._verify(plan, batch, skip, by_content)
        for _ in range(plan.repair_attempts):
            if not mismatches:
                break
            progress.phase = SyncPhase.REPAIRING
            progress.rows_repaired += sum(len(m.ids) for m in mismatches)
            await self._write(plan, batch, skip, {m.target: m.ids for m in mismatches})
            progress.phase = SyncPhase.VERIFYING
            mismatches = await self._verify(plan, batch, skip, by_content)
        if mismatches:
            progress.phase = SyncPhase.FAILED
            result = SyncResult(
                dataset=plan.dataset,
                status=SyncStatus.FAILED,
                progress=progress,
                unrepaired=[m.model_copy(update={"ids": m.ids[:REPORTED_IDS]}) for m in mismatches],
            )
            named = "; ".join(f"{m.target}: {', '.join(m.ids[:10])}" for m in mismatches)
            raise ApplicationError(
                f"sync {plan.dataset}: rows still differ after {plan.repair_attempts} "
                f"repairs ({named})",
                result.model_dump(mode="json"),
                type=SYNC_VERIFICATION_FAILED,
                non_retryable=True,
            )
        progress.rows_seen += batch.count
        progress.rows_quarantined += validation.quarantined
        progress.rows_synced += validation.valid
        progress.rows_deleted += validation.deleted
        progress.batches += 1
        progress.watermark = batch.last

    async def _verify(
        self, plan: SyncPlan, batch: ChangeBatch, skip: list[str], by_content: bool
    ) -> list[TargetMismatch]:
        outcome: VerifyOutcome = await self._step(
            "verify_sync",
            VerifyInput(plan=plan, batch=batch, skip_ids=skip, by_content=by_content),
            VerifyOutcome,
            batch_step=True,
        )
        return outcome.mismatches
