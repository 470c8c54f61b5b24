"""``SagaSteps`` for the workflows: each step a Temporal activity or local activity.

Kept out of the workflow module so the sandbox does not re-import it for every run (it is
imported passed through); it only calls the deterministic workflow APIs.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    CancelledError,
    RetryState,
    TimeoutError,
)
from temporalio.workflow import ActivityCancellationType

from nexpo_workflows.providers.base import UserRecord
from nexpo_workflows.users.models import (
    CreateUserStepInput,
    DeleteUserStepInput,
    DeleteUserStepResult,
    ProviderStep,
    SagaPlan,
    StepMode,
)
from nexpo_workflows.users.saga import TIMEOUT_KIND, StepFailedError
from nexpo_workflows.users.steps import STEP_RETRY


def _step_failed(error: ApplicationError) -> StepFailedError:
    return StepFailedError(error.type or "ApplicationError", error.message)


class ActivitySteps:
    """``SagaSteps`` as Temporal activities (or local activities, by the plan's step mode)."""

    def __init__(self, plan: SagaPlan) -> None:
        self._plan = plan

    async def _execute(
        self,
        activity: str,
        arg: Any,
        result_type: type | None,
        retry: RetryPolicy,
        time_left: float | None = None,
    ) -> Any:
        options: dict[str, Any] = {
            "result_type": result_type,
            "start_to_close_timeout": timedelta(seconds=self._plan.step_timeout_seconds),
            # Temporal stops retrying at the saga's deadline (a local activity would otherwise
            # hold the workflow task and delay the deadline's timer).
            "schedule_to_close_timeout": None
            if time_left is None
            else timedelta(seconds=max(time_left, 0.001)),
            "retry_policy": retry,
            # Wait until a cancelled step has really stopped, so no write lands after its
            # compensation.
            "cancellation_type": ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
        }
        try:
            if self._plan.step_mode is StepMode.LOCAL:
                # Back off on server timers, not inside the workflow task: a retrying local
                # activity would otherwise hold the task open and delay every other event.
                return await workflow.execute_local_activity(
                    activity, arg, local_retry_threshold=timedelta(milliseconds=50), **options
                )
            return await workflow.execute_activity(activity, arg, **options)
        except ActivityError as error:
            cause = error.cause
            if isinstance(cause, CancelledError):
                raise asyncio.CancelledError from error  # stopped by the saga, not failed
            out_of_time = isinstance(cause, TimeoutError) or error.retry_state is RetryState.TIMEOUT
            if out_of_time and time_left is not None:
                last = "" if isinstance(cause, TimeoutError) else f"; last error: {cause}"
                raise StepFailedError(
                    TIMEOUT_KIND, f"not done by the saga's deadline{last}"
                ) from error
            if isinstance(cause, ApplicationError):
                raise _step_failed(cause) from error
            raise StepFailedError(type(cause).__name__, str(cause or error)) from error
        except ApplicationError as error:
            # A local activity's non-retryable failure arrives unwrapped, without the
            # ActivityError around it; its type is the step's kind all the same.
            raise _step_failed(error) from error

    async def create(self, step: ProviderStep, user: UserRecord, time_left: float) -> None:
        await self._execute(
            step.create_activity,
            CreateUserStepInput(provider=step.provider, user=user),
            None,
            STEP_RETRY,
            time_left,
        )

    async def delete(self, step: ProviderStep, user_id: str) -> bool:
        result: DeleteUserStepResult = await self._execute(
            step.delete_activity,
            DeleteUserStepInput(provider=step.provider, user_id=user_id),
            DeleteUserStepResult,
            RetryPolicy(
                initial_interval=STEP_RETRY.initial_interval,
                backoff_coefficient=STEP_RETRY.backoff_coefficient,
                maximum_interval=STEP_RETRY.maximum_interval,
                maximum_attempts=self._plan.compensation_attempts,
            ),
        )
        return result.existed
