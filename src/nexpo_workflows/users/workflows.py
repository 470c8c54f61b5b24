"""UserOnboardingWorkflow and UserOffboardingWorkflow: thin shells over the shared saga."""

from __future__ import annotations

import logging
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from nexpo_workflows.retries import PLAN_RETRY
    from nexpo_workflows.sync.datasets import USERS_TABLE
    from nexpo_workflows.sync.erasure import EraseCopiesInput, EraseCopiesResult
    from nexpo_workflows.users.activity_steps import ActivitySteps
    from nexpo_workflows.users.models import (
        OffboardingInput,
        OnboardingInput,
        PlanInput,
        SagaOptions,
        SagaPlan,
        SagaResult,
        SagaStatus,
    )
    from nexpo_workflows.users.saga import offboard, onboard
    from nexpo_workflows.workflow_errors import raise_refusal

ROLLED_BACK = "OnboardingRolledBack"
OFFBOARDING_FAILED = "OffboardingFailed"
COPIES_NOT_ERASED = "SyncCopiesNotErased"
# The onboarding's update that answers with the saga's outcome once it has finished.
OUTCOME_WHEN_FINISHED = "outcome_when_finished"
# Sync targets may be down for a while: erasure retries, bounded, then the offboarding fails
# (and may be run again: every step is idempotent).
ERASE_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=500),
    maximum_interval=timedelta(seconds=10),
    maximum_attempts=10,
)


async def _plan(options: SagaOptions) -> SagaPlan:
    try:
        plan: SagaPlan = await workflow.execute_local_activity(
            "plan_user_saga",
            PlanInput(options=options),
            result_type=SagaPlan,
            start_to_close_timeout=timedelta(seconds=10),
            retry_policy=PLAN_RETRY,
        )
    except ActivityError as error:
        raise_refusal(error)
    return plan


def _log_outcome(saga: str, result: SagaResult) -> None:
    # workflow.logger is silent during replay, so each outcome is logged once.
    level = logging.INFO if result.status is SagaStatus.COMPLETED else logging.WARNING
    workflow.logger.log(level, "%s %s", saga, result.summary())


@workflow.defn(name="UserOnboardingWorkflow")
class UserOnboardingWorkflow:
    def __init__(self) -> None:
        self._result: SagaResult | None = None

    @workflow.run
    async def run(self, input: OnboardingInput) -> SagaResult:
        plan = await _plan(input.options)
        user = input.to_record(str(workflow.uuid4()), workflow.now())
        self._result = await onboard(plan, user, ActivitySteps(plan))
        _log_outcome("onboarding", self._result)
        # A caller waiting in ``outcome_when_finished`` gets its answer before the run ends.
        # No command: histories recorded before the update existed replay unchanged.
        await workflow.wait_condition(workflow.all_handlers_finished)
        if self._result.status is not SagaStatus.COMPLETED:
            raise ApplicationError(
                self._result.summary(),
                self._result.model_dump(mode="json"),
                type=self._result.failure_kind or ROLLED_BACK,
                non_retryable=True,
            )
        return self._result

    @workflow.query(name="outcome")
    def outcome(self) -> SagaResult | None:
        return self._result

    # A run that ends without an outcome (cancelled, its plan refused) leaves the update
    # unanswered; its caller then reads the run's failure instead.
    @workflow.update(
        name=OUTCOME_WHEN_FINISHED, unfinished_policy=workflow.HandlerUnfinishedPolicy.ABANDON
    )
    async def outcome_when_finished(self) -> SagaResult:
        """The saga's outcome once it has finished, completed or rolled back: for a caller
        on Temporal that starts the saga with this update (update-with-start)."""
        await workflow.wait_condition(lambda: self._result is not None)
        assert self._result is not None
        return self._result


@workflow.defn(name="UserOffboardingWorkflow")
class UserOffboardingWorkflow:
    @workflow.run
    async def run(self, input: OffboardingInput) -> SagaResult:
        plan = await _plan(input.options)
        result = await offboard(plan, input.user_id, ActivitySteps(plan))
        # Histories recorded before erasure existed replay without it.
        if result.status is SagaStatus.COMPLETED and workflow.patched("erase-synced-copies"):
            try:
                erased: EraseCopiesResult = await workflow.execute_activity(
                    "erase_synced_copies",
                    EraseCopiesInput(table=USERS_TABLE, key=input.user_id),
                    result_type=EraseCopiesResult,
                    start_to_close_timeout=timedelta(seconds=30),
                    retry_policy=ERASE_RETRY,
                )
                result.erased_copies = erased.copies
            except ActivityError as error:
                result.status, result.failure_kind = SagaStatus.FAILED, COPIES_NOT_ERASED
                workflow.logger.warning("offboarding: copies not erased: %s", error.cause)
        _log_outcome("offboarding", result)
        if result.status is not SagaStatus.COMPLETED:
            raise ApplicationError(
                result.summary(),
                result.model_dump(mode="json"),
                type=OFFBOARDING_FAILED,
                non_retryable=True,
            )
        return result
