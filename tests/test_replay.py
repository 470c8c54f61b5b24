"""Recorded histories of every registered workflow replay on the current code.

A change to a workflow that would break runs already in flight fails here, without a
server: the replayer feeds each history in ``tests/histories/<WorkflowType>/<case>.json``
to the workflow code, in the same sandbox and with the same interceptors and converter as
the worker. ``scripts/record_histories.py`` records them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

from temporalio import workflow
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Interceptor, Replayer

# This module defines a workflow, so the sandbox re-imports it for each run: the rest is
# passed through rather than imported again inside the sandbox.
with workflow.unsafe.imports_passed_through():
    import pytest

    from nexpo_workflows import registry
    from nexpo_workflows.telemetry import CompletionMetricsInterceptor
    from nexpo_workflows.users.models import CreateUserStepInput, OnboardingInput
    from nexpo_workflows.worker import workflow_runner

HISTORIES = Path(__file__).parent / "histories"
HISTORY_FILES = sorted(HISTORIES.glob("*/*.json"))


def load(path: Path) -> WorkflowHistory:
    data = json.loads(path.read_text())
    started = data["events"][0]["workflowExecutionStartedEventAttributes"]
    return WorkflowHistory.from_json(started["workflowId"], data)


def replayer(*workflows: type, interceptors: Sequence[Interceptor] = ()) -> Replayer:
    return Replayer(
        workflows=list(workflows),
        data_converter=pydantic_data_converter,
        interceptors=[CompletionMetricsInterceptor(), *interceptors],
        workflow_runner=workflow_runner(),
    )


@pytest.mark.parametrize(
    "path", HISTORY_FILES, ids=[f"{p.parent.name}/{p.stem}" for p in HISTORY_FILES]
)
async def test_a_recorded_history_replays_on_the_current_code(path: Path) -> None:
    history = load(path)
    started = history.events[0].workflow_execution_started_event_attributes
    assert started.workflow_type.name == path.parent.name
    await replayer(*registry.WORKFLOWS).replay_workflow(history, raise_on_replay_failure=True)


def test_every_registered_workflow_has_recorded_histories() -> None:
    recorded = {path.parent.name for path in HISTORY_FILES}
    assert recorded == registry.WORKFLOW_NAMES, (
        "record histories for every registered workflow (and only those): "
        ".venv/bin/python -m scripts.record_histories"
    )


@workflow.defn(name="UserOnboardingWorkflow")
class IncompatibleOnboardingWorkflow:
    """The onboarding workflow after a careless edit: it writes before it plans, so its
    first command is another activity, where the history holds the plan's."""

    @workflow.run
    async def run(self, input: OnboardingInput) -> None:
        await workflow.execute_activity(
            "create_postgres_user",
            CreateUserStepInput(
                provider="postgres", user=input.to_record(str(workflow.uuid4()), workflow.now())
            ),
            start_to_close_timeout=timedelta(seconds=10),
        )


async def test_an_incompatible_change_is_caught_by_the_replayer() -> None:
    history = load(HISTORIES / "UserOnboardingWorkflow" / "success_parallel_activity.json")
    with pytest.raises(workflow.NondeterminismError, match="Nondeterminism error"):
        await replayer(IncompatibleOnboardingWorkflow).replay_workflow(
            history, raise_on_replay_failure=True
        )
