"""The onboarding saga's decisions and compensation order, shared by both execution modes.

The same code runs inside ``UserOnboardingWorkflow`` (steps are Temporal activities) and
in-process when ``ENABLE_TEMPORAL=false`` (steps call the providers directly), so the
all-or-nothing rules cannot drift apart; the compensation rules are the saga kernel's
(``nexpo_workflows.saga``). It only awaits ``SagaSteps`` and uses deterministic primitives
(``workflow.wait``, the loop's clock), which makes it replay-safe.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Sequence
from typing import Any, Protocol

from temporalio import workflow

from nexpo_workflows.providers.base import UserRecord
from nexpo_workflows.saga import Saga, Settle
from nexpo_workflows.users.models import (
    ProviderOutcome,
    ProviderStatus,
    ProviderStep,
    SagaPlan,
    SagaResult,
    SagaStatus,
)

TIMEOUT_KIND = "SagaTimeout"
SAGA_NAME = "onboarding"


class StepFailedError(Exception):
    """A step gave up: ``kind`` says why (DuplicateEmail, ProviderUnavailable, ...)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class SagaSteps(Protocol):
    async def create(self, step: ProviderStep, user: UserRecord, time_left: float) -> None:
        """Write the user (idempotent), retrying for at most ``time_left`` seconds; raise
        StepFailedError when it cannot succeed (kind TIMEOUT_KIND when time ran out)."""

    async def delete(self, step: ProviderStep, user_id: str) -> bool:
        """Remove the user (idempotent, retried a bounded number of times); raise
        StepFailedError when it gives up."""


def _groups(plan: SagaPlan, *, claim: bool = False) -> list[list[ProviderStep]]:
    """The steps that run together, group after group. With ``claim`` (creating a user), a
    parallel plan that says so writes its first provider alone first (``claim_first``)."""
    steps = list(plan.steps)
    if not plan.parallel:
        return [[step] for step in steps]
    if claim and plan.claim_first and len(steps) > 1:
        return [steps[:1], steps[1:]]
    return [steps]


async def _settle(tasks: Sequence[asyncio.Task[Any]]) -> None:
    """Cancel what still runs and wait until it has really stopped (no late writes)."""
    for task in tasks:
        task.cancel()
    if tasks:
        await workflow.wait(tasks)


async def _run_group(coroutines: list[Coroutine[Any, Any, None]]) -> str | None:
    """Run the steps of one group together; the kind of the first failure, or None.

    Each step bounds itself by the saga's deadline, so no timer is needed here.
    """
    tasks = [asyncio.create_task(coroutine) for coroutine in coroutines]
    try:
        done, pending = await workflow.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    except asyncio.CancelledError:
        await _settle(tasks)
        raise
    await _settle(pending)
    # Read every task's outcome (not only the first failure), so none is left unretrieved.
    errors = [task.exception() for task in done if not task.cancelled()]
    kinds = [
        error.kind if isinstance(error, StepFailedError) else type(error).__name__
        for error in errors
        if error is not None
    ]
    return kinds[0] if kinds else None


def settle_provider_outcomes(outcomes: dict[str, ProviderOutcome]) -> Settle:
    """Record each compensation's end in the provider's outcome."""

    def settle(provider: str, error: str | None) -> None:
        outcome = outcomes[provider]
        if error is not None:
            outcome.status, outcome.compensation_error = ProviderStatus.COMPENSATION_FAILED, error
        elif outcome.status is not ProviderStatus.FAILED:
            outcome.status = ProviderStatus.COMPENSATED

    return settle


async def onboard(plan: SagaPlan, user: UserRecord, steps: SagaSteps) -> SagaResult:
    """Create ``user`` in every planned provider, or compensate every step that started."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + plan.timeout_seconds
    outcomes = {
        s.provider: ProviderOutcome(provider=s.provider, status=ProviderStatus.NOT_STARTED)
        for s in plan.steps
    }
    saga = Saga(SAGA_NAME, settle_provider_outcomes(outcomes))

    async def create(step: ProviderStep) -> None:
        outcome = outcomes[step.provider]
        try:
            await saga.step(
                step.provider,
                lambda: steps.create(step, user, deadline - loop.time()),
                lambda: steps.delete(step, user.id),
            )
        except Exception as error:
            outcome.status, outcome.error = ProviderStatus.FAILED, str(error) or repr(error)
            raise
        except asyncio.CancelledError:
            outcome.error = "interrupted before it finished"
            raise
        outcome.status = ProviderStatus.CREATED

    async def create_all() -> str | None:
        for group in _groups(plan, claim=True):
            failure = await _run_group([create(step) for step in group])
            if failure is not None:
                return failure
        return None

    failure = await saga.run(create_all)
    if failure is None:
        return SagaResult(
            user_id=user.id, status=SagaStatus.COMPLETED, providers=list(outcomes.values())
        )
    complete = await saga.compensate()
    return SagaResult(
        user_id=user.id,
        status=SagaStatus.ROLLED_BACK if complete else SagaStatus.ROLLBACK_INCOMPLETE,
        providers=list(outcomes.values()),
        failure_kind=failure,
    )


async def offboard(plan: SagaPlan, user_id: str, steps: SagaSteps) -> SagaResult:
    """Delete the user from every planned provider; every provider is tried."""
    outcomes: dict[str, ProviderOutcome] = {}

    async def delete(step: ProviderStep) -> None:
        try:
            existed = await steps.delete(step, user_id)
        except StepFailedError as error:
            outcomes[step.provider] = ProviderOutcome(
                provider=step.provider, status=ProviderStatus.FAILED, error=str(error)
            )
            return
        status = ProviderStatus.DELETED if existed else ProviderStatus.ABSENT
        outcomes[step.provider] = ProviderOutcome(provider=step.provider, status=status)

    for group in _groups(plan):
        await asyncio.gather(*(delete(step) for step in group))
    ordered = [outcomes[step.provider] for step in plan.steps]
    failed = any(o.status is ProviderStatus.FAILED for o in ordered)
    return SagaResult(
        user_id=user_id,
        status=SagaStatus.FAILED if failed else SagaStatus.COMPLETED,
        providers=ordered,
        failure_kind="ProviderUnavailable" if failed else None,
    )
