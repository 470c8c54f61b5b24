"""HealthCheckWorkflow: probe every enabled dependency in parallel and report."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from nexpo_workflows.health.activities import HealthActivities
    from nexpo_workflows.health.models import (
        DependencyCheckInput,
        DependencyState,
        DependencyStatus,
        HealthCheckInput,
        HealthReport,
        ListDependenciesInput,
    )
    from nexpo_workflows.retries import PLAN_RETRY

# A probe is retried once (a lost task, a worker restart), never endlessly.
_PROBE_RETRY = RetryPolicy(maximum_attempts=2, initial_interval=timedelta(milliseconds=200))


@workflow.defn(name="HealthCheckWorkflow")
class HealthCheckWorkflow:
    @workflow.run
    async def run(self, input: HealthCheckInput) -> HealthReport:
        enabled = await workflow.execute_local_activity_method(
            HealthActivities.list_health_dependencies,
            ListDependenciesInput(),
            start_to_close_timeout=timedelta(seconds=5),
            retry_policy=PLAN_RETRY,
        )
        names = enabled if input.dependencies is None else input.dependencies
        unknown = sorted(set(names) - set(enabled))
        if unknown:
            raise ApplicationError(
                f"unknown dependencies {unknown}; the worker has enabled {enabled}",
                type="UnknownDependency",
                non_retryable=True,
            )
        statuses = await asyncio.gather(
            *(self._check(name, input.timeout_seconds) for name in names)
        )
        return HealthReport(checked_at=workflow.now(), dependencies=list(statuses))

    async def _check(self, name: str, timeout_seconds: float) -> DependencyStatus:
        started = workflow.time()
        try:
            return await workflow.execute_activity_method(
                HealthActivities.check_dependency,
                DependencyCheckInput(name=name, timeout_seconds=timeout_seconds),
                # The probe bounds itself; this only catches a worker that never answers.
                start_to_close_timeout=timedelta(seconds=timeout_seconds + 5),
                retry_policy=_PROBE_RETRY,
                summary=f"check {name}",
            )
        except ActivityError as error:
            cause = error.cause or error
            return DependencyStatus(
                name=name,
                status=DependencyState.DOWN,
                latency_ms=round((workflow.time() - started) * 1000, 3),
                error=str(cause) or type(cause).__name__,
            )
