"""Every activity every workflow schedules has a bounded retry policy: a maximum number of
attempts or a schedule-to-close timeout. Checked on what the workflows really ask for, by
replaying every recorded history with an interceptor that keeps each activity's options
(local activities included, which leave no options in a history)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from temporalio import workflow
from temporalio.worker import (
    Interceptor,
    StartActivityInput,
    StartLocalActivityInput,
    WorkflowInboundInterceptor,
    WorkflowInterceptorClassInput,
    WorkflowOutboundInterceptor,
)

with workflow.unsafe.imports_passed_through():
    from nexpo_workflows import registry
    from tests.test_replay import HISTORY_FILES, load, replayer


@dataclass(frozen=True)
class Scheduled:
    workflow_type: str
    activity: str
    local: bool
    bounded: bool


SCHEDULED: list[Scheduled] = []


def _bounded(input: StartActivityInput | StartLocalActivityInput) -> bool:
    attempts = input.retry_policy.maximum_attempts if input.retry_policy else 0
    return attempts > 0 or input.schedule_to_close_timeout is not None


class _Outbound(WorkflowOutboundInterceptor):
    def _keep(self, input: StartActivityInput | StartLocalActivityInput, local: bool) -> None:
        SCHEDULED.append(
            Scheduled(workflow.info().workflow_type, input.activity, local, _bounded(input))
        )

    def start_activity(self, input: StartActivityInput) -> workflow.ActivityHandle[Any]:
        self._keep(input, local=False)
        return super().start_activity(input)

    def start_local_activity(self, input: StartLocalActivityInput) -> workflow.ActivityHandle[Any]:
        self._keep(input, local=True)
        return super().start_local_activity(input)


class _Inbound(WorkflowInboundInterceptor):
    def init(self, outbound: WorkflowOutboundInterceptor) -> None:
        super().init(_Outbound(outbound))


class KeepActivityOptions(Interceptor):
    def workflow_interceptor_class(
        self, input: WorkflowInterceptorClassInput
    ) -> type[WorkflowInboundInterceptor]:
        return _Inbound


async def test_every_activity_in_the_recorded_histories_has_a_bounded_retry_policy() -> None:
    SCHEDULED.clear()
    checker = replayer(*registry.WORKFLOWS, interceptors=[KeepActivityOptions()])
    for path in HISTORY_FILES:
        await checker.replay_workflow(load(path), raise_on_replay_failure=True)
    # Every workflow type scheduled something, local and not.
    assert {s.workflow_type for s in SCHEDULED} == registry.WORKFLOW_NAMES
    assert any(s.local for s in SCHEDULED)
    assert any(not s.local for s in SCHEDULED)
    unbounded = sorted({(s.workflow_type, s.activity) for s in SCHEDULED if not s.bounded})
    assert unbounded == []
