"""The saga's steps: provider calls, their activities, and the in-process executor.

One ``create_<label>_user`` / ``delete_<label>_user`` activity pair per enabled provider,
named as in the guide so the Web UI shows which database each step touched.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, TypeVar

from temporalio import activity
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError

from nexpo_workflows.config import Settings
from nexpo_workflows.providers import (
    PROVIDERS,
    DatabaseProvider,
    DuplicateEmailError,
    InvalidRecordError,
    ProviderUnavailableError,
    UserRecord,
)
from nexpo_workflows.users.models import (
    CreateUserStepInput,
    DeleteUserStepInput,
    DeleteUserStepResult,
    PlanInput,
    ProviderStep,
    SagaOptions,
    SagaPlan,
    StepMode,
)
from nexpo_workflows.users.saga import TIMEOUT_KIND, StepFailedError

T = TypeVar("T")

DUPLICATE_EMAIL = "DuplicateEmail"
PROVIDER_UNAVAILABLE = "ProviderUnavailable"
UNKNOWN_PROVIDER = "UnknownProvider"
# A database refused the record's content: the caller's input, answered 422 / exit 2.
INVALID_INPUT = "InvalidInput"

NON_RETRYABLE = (DUPLICATE_EMAIL, UNKNOWN_PROVIDER, INVALID_INPUT)
MAX_DELAY_SECONDS = 5.0
STEP_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=200),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=MAX_DELAY_SECONDS),
    non_retryable_error_types=list(NON_RETRYABLE),
)


def plan_saga(settings: Settings, enabled: list[str], options: SagaOptions) -> SagaPlan:
    """The run's plan: the options where given, the worker's settings elsewhere."""
    providers = options.providers if options.providers is not None else enabled
    unknown = sorted(set(providers) - set(enabled))
    if unknown or not providers:
        raise ApplicationError(
            f"providers {unknown or providers} are not enabled on this worker; enabled: {enabled}",
            type=UNKNOWN_PROVIDER,
            non_retryable=True,
        )
    labels = {name: PROVIDERS[name].activity_label for name in providers}
    return SagaPlan(
        steps=[
            ProviderStep(
                provider=name,
                create_activity=f"create_{labels[name]}_user",
                delete_activity=f"delete_{labels[name]}_user",
            )
            for name in providers
        ],
        step_mode=options.step_mode or StepMode(settings.onboarding_step_mode),
        parallel=settings.onboarding_parallel if options.parallel is None else options.parallel,
        claim_first=True,
        timeout_seconds=options.timeout_seconds or settings.onboarding_timeout_seconds,
        step_timeout_seconds=settings.onboarding_step_timeout_seconds,
        compensation_attempts=settings.onboarding_compensation_attempts,
    )


class UserSteps:
    """Provider calls with their errors sorted into retryable and not."""

    def __init__(self, providers: dict[str, DatabaseProvider]) -> None:
        self.providers = providers

    def _provider(self, name: str) -> DatabaseProvider:
        try:
            return self.providers[name]
        except KeyError:
            raise StepFailedError(UNKNOWN_PROVIDER, f"provider {name} is not enabled") from None

    async def _call(self, name: str, call: Callable[[DatabaseProvider], Awaitable[T]]) -> T:
        try:
            return await call(self._provider(name))
        except DuplicateEmailError as error:
            raise StepFailedError(DUPLICATE_EMAIL, str(error)) from error
        except InvalidRecordError as error:
            raise StepFailedError(INVALID_INPUT, str(error)) from error
        except ProviderUnavailableError as error:
            raise StepFailedError(PROVIDER_UNAVAILABLE, str(error)) from error

    async def create_user(self, name: str, user: UserRecord) -> None:
        await self._call(name, lambda provider: provider.create_user(user))

    async def delete_user(self, name: str, user_id: str) -> bool:
        return await self._call(name, lambda provider: provider.delete_user(user_id))


def _as_application_error(error: StepFailedError) -> ApplicationError:
    return ApplicationError(
        str(error),
        type=error.kind,
        non_retryable=error.kind in NON_RETRYABLE,
    )


class UserActivities:
    """The activities of both user workflows, built for the providers this worker has."""

    def __init__(self, settings: Settings, steps: UserSteps) -> None:
        self._settings = settings
        self._steps = steps

    @activity.defn(name="plan_user_saga")
    async def plan_user_saga(self, input: PlanInput) -> SagaPlan:
        return plan_saga(self._settings, list(self._steps.providers), input.options)

    async def _measured(self, provider: str, step: str, call: Awaitable[T]) -> T:
        started = time.perf_counter()
        outcome = "error"
        try:
            result = await call
            outcome = "ok"
            return result
        except StepFailedError as error:
            # The kind and the provider's message only: the step's input holds a password hash.
            activity.logger.warning("%s on %s failed: %s: %s", step, provider, error.kind, error)
            raise _as_application_error(error) from error
        finally:
            activity.metric_meter().create_histogram_float(
                "saga_step_latency", "Duration of one saga step on one provider", "ms"
            ).record(
                (time.perf_counter() - started) * 1000,
                {"provider": provider, "step": step, "outcome": outcome},
            )

    def _create(self, provider: str, label: str) -> Callable[..., Any]:
        @activity.defn(name=f"create_{label}_user")
        async def create_user(input: CreateUserStepInput) -> None:
            await self._measured(provider, "create", self._steps.create_user(provider, input.user))

        return create_user

    def _delete(self, provider: str, label: str) -> Callable[..., Any]:
        @activity.defn(name=f"delete_{label}_user")
        async def delete_user(input: DeleteUserStepInput) -> DeleteUserStepResult:
            existed = await self._measured(
                provider, "delete", self._steps.delete_user(provider, input.user_id)
            )
            return DeleteUserStepResult(provider=provider, existed=existed)

        return delete_user

    def all(self) -> list[Callable[..., Any]]:
        found: list[Callable[..., Any]] = [self.plan_user_saga]
        for provider in self._steps.providers:
            label = PROVIDERS[provider].activity_label
            found += [self._create(provider, label), self._delete(provider, label)]
        return found


class InProcessSteps:
    """``SagaSteps`` without Temporal (ENABLE_TEMPORAL=false): same steps, same retry rules,
    but not durable: a crash of this process mid-saga leaves what was written."""

    def __init__(self, steps: UserSteps, plan: SagaPlan) -> None:
        self._steps = steps
        self._plan = plan

    async def _retrying(self, call: Callable[[], Awaitable[T]], attempts: int | None) -> T:
        delay = STEP_RETRY.initial_interval.total_seconds()
        attempt = 1
        while True:
            try:
                return await asyncio.wait_for(call(), self._plan.step_timeout_seconds)
            except TimeoutError:
                error = StepFailedError(PROVIDER_UNAVAILABLE, "step timed out")
            except StepFailedError as failed:
                if failed.kind in NON_RETRYABLE:
                    raise
                error = failed
            if attempts is not None and attempt >= attempts:
                raise error
            attempt += 1
            await asyncio.sleep(delay)
            delay = min(delay * STEP_RETRY.backoff_coefficient, MAX_DELAY_SECONDS)

    async def create(self, step: ProviderStep, user: UserRecord, time_left: float) -> None:
        try:
            await asyncio.wait_for(
                self._retrying(lambda: self._steps.create_user(step.provider, user), None),
                max(time_left, 0),
            )
        except TimeoutError:
            raise StepFailedError(TIMEOUT_KIND, "not done by the saga's deadline") from None

    async def delete(self, step: ProviderStep, user_id: str) -> bool:
        return await self._retrying(
            lambda: self._steps.delete_user(step.provider, user_id),
            self._plan.compensation_attempts,
        )
