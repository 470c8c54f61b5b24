"""ReplicateObjectWorkflow: copy an object from one store to the others, per-target outcome."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from nexpo_workflows import execution
    from nexpo_workflows.replication.models import (
        CopyObjectInput,
        ReplicaOutcome,
        ReplicaStatus,
        ReplicateInput,
        ReplicateResult,
        ReplicationPlan,
        ReplicationPlanInput,
    )
    from nexpo_workflows.retries import PLAN_RETRY
    from nexpo_workflows.workflow_errors import raise_refusal

INCOMPLETE = "ReplicationIncomplete"
_COPY_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=5,
    non_retryable_error_types=["UnknownStore", "SourceMissing"],
)


@workflow.defn(name="ReplicateObjectWorkflow")
class ReplicateObjectWorkflow:
    @workflow.run
    async def run(self, input: ReplicateInput) -> ReplicateResult:
        try:
            plan: ReplicationPlan = await execution.execute_activity(
                "plan_replication",
                ReplicationPlanInput(source=input.source, targets=input.targets),
                local=True,
                result_type=ReplicationPlan,
                start_to_close_timeout=timedelta(seconds=10),
                retry_policy=PLAN_RETRY,
            )
        except ActivityError as error:
            raise_refusal(error)
        replicas = await asyncio.gather(
            *(self._copy(input.key, plan.source, target) for target in plan.targets)
        )
        result = ReplicateResult(
            key=input.key,
            source=plan.source,
            sha256=next((r.sha256 for r in replicas if r.sha256), None),
            replicas=list(replicas),
        )
        if not result.complete:
            failed = [r.store for r in replicas if r.status is ReplicaStatus.FAILED]
            raise ApplicationError(
                f"{input.key} not replicated to {failed}",
                result.model_dump(mode="json"),
                type=INCOMPLETE,
                non_retryable=True,
            )
        return result

    async def _copy(self, key: str, source: str, target: str) -> ReplicaOutcome:
        try:
            outcome: ReplicaOutcome = await execution.execute_activity(
                "copy_object",
                CopyObjectInput(key=key, source=source, target=target),
                result_type=ReplicaOutcome,
                start_to_close_timeout=timedelta(hours=1),
                heartbeat_timeout=timedelta(seconds=60),
                retry_policy=_COPY_RETRY,
                summary=f"{source} -> {target}",
            )
        except ActivityError as error:
            cause = error.cause
            return ReplicaOutcome(
                store=target,
                status=ReplicaStatus.FAILED,
                error=str(cause.message if isinstance(cause, ApplicationError) else cause),
            )
        return outcome
