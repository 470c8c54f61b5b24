"""The saga kernel: the compensation rules every saga here follows, written once.

Onboarding (``users/saga.py``, inside ``UserOnboardingWorkflow`` and in-process when
``ENABLE_TEMPORAL=false``), tenant provisioning and content publishing all use it:

- a step's compensation is registered *before* the step runs, so a step whose answer was
  lost (it wrote, then failed or timed out on the way back) or that was interrupted is
  undone too; each compensation is idempotent and decides itself what is its to undo;
- compensations run in reverse order, each one even if an earlier one gave up;
- they run when a step fails and when the saga is cancelled (``run``);
- each is bounded by its own retries (an activity's retry policy with a maximum of attempts,
  or the in-process step's attempts); one that gives up is reported to the saga's ``settle``
  as ``compensation_failed``, not hidden;
- every compensation is counted in ``saga_compensations_total{saga,step,outcome}``.

Only deterministic awaits happen here (the steps' own, ``asyncio`` on the running loop), so
the kernel is replay-safe inside a workflow and plain asyncio outside one. Imported passed
through the workflow sandbox.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.exceptions import ActivityError

from nexpo_workflows.errors import first_line

T = TypeVar("T")

COMPENSATED = "compensated"
COMPENSATION_FAILED = "compensation_failed"
METRIC = "saga_compensations"


# Called when a step's compensation ended, with the step and why the compensation gave up
# (None when the step was undone).
Settle = Callable[[str, str | None], None]


def reason(error: BaseException) -> str:
    """One line saying why a step or a compensation failed (an activity's cause, not its
    wrapper)."""
    if isinstance(error, ActivityError) and error.cause is not None:
        return first_line(error.cause)
    return first_line(error)


def _count(saga: str, step: str, outcome: str) -> None:
    # Only a worker's runtime exports metrics; in-process there is none to export to.
    if workflow.in_workflow():
        workflow.metric_meter().create_counter(
            METRIC, "Compensations run by the sagas, by saga, step and outcome"
        ).add(1, {"saga": saga, "step": step, "outcome": outcome})


class Saga:
    """The compensations of one saga run, in registration order."""

    def __init__(self, name: str, settle: Settle) -> None:
        self._name = name
        self._settle = settle
        self._compensations: list[tuple[str, Callable[[], Awaitable[Any]]]] = []

    async def step(
        self,
        name: str,
        action: Callable[[], Awaitable[T]],
        compensation: Callable[[], Awaitable[Any]],
    ) -> T:
        """Register ``compensation``, then run ``action``: from here on the step is undone
        whatever its answer, even none."""
        self._compensations.append((name, compensation))
        return await action()

    async def run(self, body: Callable[[], Awaitable[T]]) -> T:
        """Run the saga's steps; when it is cancelled, compensate what was attempted, then
        let the cancellation go on."""
        try:
            return await body()
        except asyncio.CancelledError:
            await self.compensate()
            raise

    async def compensate(self) -> bool:
        """Undo every registered step in reverse order; whether every compensation succeeded."""
        complete = True
        compensations, self._compensations = self._compensations, []
        for step, compensation in reversed(compensations):
            try:
                await compensation()
            except Exception as error:
                complete = False
                _count(self._name, step, COMPENSATION_FAILED)
                self._settle(step, reason(error))
                continue
            _count(self._name, step, COMPENSATED)
            self._settle(step, None)
        return complete
