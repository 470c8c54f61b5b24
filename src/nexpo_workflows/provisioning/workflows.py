"""ProvisionResourcesWorkflow and DeprovisionResourcesWorkflow: a tenant's resources in every
enabled store and SQL database, all or none.

The compensation rules are the saga kernel's (``nexpo_workflows.saga``). Each create marks
what it makes with the run's id, and each compensation removes only what bears it: a create
whose answer was lost (reported "created" by its retry) is undone, a resource that was there
before the run ("existed") never is.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError
from temporalio.workflow import ActivityCancellationType

with workflow.unsafe.imports_passed_through():
    from nexpo_workflows import execution
    from nexpo_workflows.provisioning.activities import ProvisioningActivities
    from nexpo_workflows.provisioning.models import (
        BucketSpaceInput,
        DbSchemaInput,
        DeprovisionInput,
        PlanProvisioningInput,
        ProvisioningPlan,
        ProvisioningResult,
        ProvisioningStatus,
        ProvisionInput,
        Resource,
        ResourceKind,
        ResourceOutcome,
        ResourceRecordInput,
        ResourceStatus,
        WriteResourceRecordInput,
    )
    from nexpo_workflows.retries import PLAN_RETRY
    from nexpo_workflows.saga import Saga, reason

In = TypeVar("In")
R = TypeVar("R")

SAGA_NAME = "provisioning"
ROLLED_BACK = "ProvisioningRolledBack"
DEPROVISIONING_FAILED = "DeprovisioningFailed"


class _Steps:
    """The activity behind each resource kind and action, with the plan's limits."""

    def __init__(self, plan: ProvisioningPlan, tenant_id: str, owner: str | None) -> None:
        self._plan = plan
        self._tenant_id = tenant_id
        # None: deletes remove whoever made the resource (deprovisioning).
        self._owner = owner

    async def _execute(
        self,
        activity: Callable[[ProvisioningActivities, In], Awaitable[R]],
        arg: In,
        attempts: int,
    ) -> R:
        try:
            result: R = await execution.execute_activity(
                activity,
                arg,
                start_to_close_timeout=timedelta(seconds=self._plan.step_timeout_seconds),
                retry_policy=RetryPolicy(
                    initial_interval=timedelta(milliseconds=200),
                    maximum_interval=timedelta(seconds=5),
                    maximum_attempts=attempts,
                ),
                # A cancelled step is awaited until it has stopped, so nothing it writes lands
                # after its compensation.
                cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
            )
        except ActivityError as error:
            if isinstance(error.cause, CancelledError):
                raise asyncio.CancelledError from error  # stopped by the saga, not failed
            raise
        return result

    async def create(self, resource: Resource, resources: list[Resource]) -> bool:
        """Make ``resource`` (the record lists ``resources``); False if it was there."""
        tenant_id, attempts, owner = self._tenant_id, self._plan.step_attempts, self._owner
        if resource.kind is ResourceKind.BUCKET_SPACE:
            space = BucketSpaceInput(tenant_id=tenant_id, store=resource.target, owner=owner)
            result = await self._execute(
                ProvisioningActivities.create_bucket_space, space, attempts
            )
        elif resource.kind is ResourceKind.DB_SCHEMA:
            schema = DbSchemaInput(tenant_id=tenant_id, provider=resource.target, owner=owner)
            result = await self._execute(ProvisioningActivities.create_db_schema, schema, attempts)
        else:
            record = WriteResourceRecordInput(
                tenant_id=tenant_id, store=resource.target, resources=resources, owner=owner
            )
            result = await self._execute(
                ProvisioningActivities.write_resource_record, record, attempts
            )
        return result.changed

    async def delete(self, resource: Resource) -> bool:
        """Remove ``resource`` (only if the owner's, when there is one); False if it was
        absent or someone else's."""
        tenant_id, attempts, owner = self._tenant_id, self._plan.compensation_attempts, self._owner
        if resource.kind is ResourceKind.BUCKET_SPACE:
            space = BucketSpaceInput(tenant_id=tenant_id, store=resource.target, owner=owner)
            result = await self._execute(
                ProvisioningActivities.delete_bucket_space, space, attempts
            )
        elif resource.kind is ResourceKind.DB_SCHEMA:
            schema = DbSchemaInput(tenant_id=tenant_id, provider=resource.target, owner=owner)
            result = await self._execute(ProvisioningActivities.drop_db_schema, schema, attempts)
        else:
            record = ResourceRecordInput(tenant_id=tenant_id, store=resource.target, owner=owner)
            result = await self._execute(
                ProvisioningActivities.delete_resource_record, record, attempts
            )
        return result.changed

    async def recorded(self) -> list[Resource] | None:
        """What the tenant's record lists, or None when there is no record."""
        if self._plan.record_store is None:
            return None
        found = await self._execute(
            ProvisioningActivities.read_resource_record,
            ResourceRecordInput(tenant_id=self._tenant_id, store=self._plan.record_store),
            self._plan.step_attempts,
        )
        return None if found.record is None else list(found.record.provisioned_resources)


async def _plan(tenant_id: str) -> ProvisioningPlan:
    plan: ProvisioningPlan = await execution.execute_activity(
        ProvisioningActivities.plan_provisioning,
        PlanProvisioningInput(tenant_id=tenant_id),
        local=True,
        start_to_close_timeout=timedelta(seconds=10),
        retry_policy=PLAN_RETRY,
    )
    return plan


def _finish(result: ProvisioningResult, kind: str) -> ProvisioningResult:
    # workflow.logger is silent during replay, so each outcome is logged once.
    completed = result.status is ProvisioningStatus.COMPLETED
    execution.logger().log(logging.INFO if completed else logging.WARNING, "%s", result.summary())
    if not completed:
        raise ApplicationError(
            result.summary(), result.model_dump(mode="json"), type=kind, non_retryable=True
        )
    return result


@workflow.defn(name="ProvisionResourcesWorkflow")
class ProvisionResourcesWorkflow:
    def __init__(self) -> None:
        self._outcomes: dict[str, ResourceOutcome] = {}

    @workflow.run
    async def run(self, input: ProvisionInput) -> ProvisioningResult:
        plan = await _plan(input.tenant_id)
        # This run's id marks what it creates: its compensations remove only that.
        steps = _Steps(plan, input.tenant_id, owner=execution.run_id())
        resources = plan.resources()
        self._outcomes = {
            r.label(): ResourceOutcome(resource=r, status=ResourceStatus.NOT_STARTED)
            for r in resources
        }
        saga = Saga(SAGA_NAME, self._settle)

        async def create_all() -> bool:
            for resource in resources:
                if not await self._create(saga, steps, resource, resources):
                    return False
            return True

        if await saga.run(create_all):
            return _finish(self._result(input, ProvisioningStatus.COMPLETED), ROLLED_BACK)
        complete = await saga.compensate()
        status = (
            ProvisioningStatus.ROLLED_BACK if complete else ProvisioningStatus.ROLLBACK_INCOMPLETE
        )
        return _finish(self._result(input, status), ROLLED_BACK)

    async def _create(
        self, saga: Saga, steps: _Steps, resource: Resource, resources: list[Resource]
    ) -> bool:
        outcome = self._outcomes[resource.label()]
        try:
            created = await saga.step(
                resource.label(),
                lambda: steps.create(resource, resources),
                lambda: steps.delete(resource),
            )
        except ActivityError as error:
            outcome.status, outcome.error = ResourceStatus.FAILED, reason(error)
            return False
        except asyncio.CancelledError:
            outcome.error = "interrupted before it finished"
            raise
        outcome.status = ResourceStatus.CREATED if created else ResourceStatus.EXISTED
        return True

    def _settle(self, label: str, error: str | None) -> None:
        outcome = self._outcomes[label]
        if error is not None:
            outcome.status, outcome.compensation_error = ResourceStatus.COMPENSATION_FAILED, error
        elif outcome.status not in (ResourceStatus.FAILED, ResourceStatus.EXISTED):
            # An existing resource was left alone by its compensation: not this run's.
            outcome.status = ResourceStatus.COMPENSATED

    def _result(self, input: ProvisionInput, status: ProvisioningStatus) -> ProvisioningResult:
        return ProvisioningResult(
            tenant_id=input.tenant_id, status=status, resources=list(self._outcomes.values())
        )

    @workflow.query(name="outcome")
    def outcome(self) -> list[ResourceOutcome]:
        return list(self._outcomes.values())


@workflow.defn(name="DeprovisionResourcesWorkflow")
class DeprovisionResourcesWorkflow:
    @workflow.run
    async def run(self, input: DeprovisionInput) -> ProvisioningResult:
        plan = await _plan(input.tenant_id)
        steps = _Steps(plan, input.tenant_id, owner=None)
        # Without a record (never provisioned, or a run that died early), every resource
        # this worker could have made is removed: each delete finds nothing or cleans up.
        recorded = await steps.recorded()
        listed = plan.resources() if recorded is None else recorded
        record = [r for r in plan.resources() if r.kind is ResourceKind.RESOURCE_RECORD]
        owned = [r for r in listed if r.kind is not ResourceKind.RESOURCE_RECORD]
        outcomes = [await self._delete(steps, resource) for resource in reversed(owned)]
        remaining = [o.resource for o in outcomes if o.status is ResourceStatus.FAILED]
        for resource in record:
            if remaining:
                # The record then lists what is left, for the next run to find.
                await steps.create(resource, [*remaining, resource])
            else:
                outcomes.append(await self._delete(steps, resource))
        status = ProvisioningStatus.FAILED if remaining else ProvisioningStatus.COMPLETED
        result = ProvisioningResult(tenant_id=input.tenant_id, status=status, resources=outcomes)
        return _finish(result, DEPROVISIONING_FAILED)

    async def _delete(self, steps: _Steps, resource: Resource) -> ResourceOutcome:
        try:
            existed = await steps.delete(resource)
        except ActivityError as error:
            return ResourceOutcome(
                resource=resource, status=ResourceStatus.FAILED, error=reason(error)
            )
        status = ResourceStatus.DELETED if existed else ResourceStatus.ABSENT
        return ResourceOutcome(resource=resource, status=status)
