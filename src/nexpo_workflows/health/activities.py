"""Health-check activities: one per dependency, run in parallel by the workflow."""

from __future__ import annotations

from temporalio import activity
from temporalio.exceptions import ApplicationError

from nexpo_workflows.health.checks import DependencyChecker, UnknownDependencyError
from nexpo_workflows.health.models import (
    DependencyCheckInput,
    DependencyStatus,
    ListDependenciesInput,
)


class HealthActivities:
    def __init__(self, checker: DependencyChecker) -> None:
        self._checker = checker

    @activity.defn(name="list_health_dependencies")
    async def list_health_dependencies(self, input: ListDependenciesInput) -> list[str]:
        return self._checker.names

    @activity.defn(name="check_dependency")
    async def check_dependency(self, input: DependencyCheckInput) -> DependencyStatus:
        try:
            return await self._checker.check(input.name, input.timeout_seconds)
        except UnknownDependencyError as error:
            raise ApplicationError(
                str(error), type="UnknownDependency", non_retryable=True
            ) from error
