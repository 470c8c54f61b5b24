"""The user onboarding saga on a real Temporal server with real databases.

Every check of "no trace" reads each database through a separate, freshly connected
provider, not through the worker's own objects.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError
from temporalio.exceptions import ApplicationError, CancelledError

from nexpo_workflows.config import Settings
from nexpo_workflows.providers import enabled_providers
from nexpo_workflows.users.models import (
    OffboardingInput,
    OnboardingInput,
    ProviderStatus,
    SagaOptions,
    SagaResult,
    SagaStatus,
    StepMode,
)
from nexpo_workflows.users.saga import onboard
from nexpo_workflows.users.steps import InProcessSteps, UserSteps, plan_saga
from nexpo_workflows.users.workflows import UserOffboardingWorkflow, UserOnboardingWorkflow
from tests.conftest import ALL_PROVIDERS, saga_worker, stored
from tests.faults import FaultyProvider

HASH = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo"
PROVIDERS = ALL_PROVIDERS


def onboarding(**options: Any) -> OnboardingInput:
    return OnboardingInput(
        email=f"Ada.{uuid.uuid4().hex[:10]}@Example.com",
        name="Ada Lovelace",
        password_hash=HASH,
        profile={"plan": "pro"},
        user_id=str(uuid.uuid4()),
        options=SagaOptions(**options),
    )


async def run_saga(client: Client, settings: Settings, input: OnboardingInput) -> SagaResult:
    return await client.execute_workflow(
        UserOnboardingWorkflow.run,
        input,
        id=f"user-onboarding-{uuid.uuid4()}",
        task_queue=settings.temporal_task_queue,
    )


async def rolled_back(client: Client, settings: Settings, input: OnboardingInput) -> SagaResult:
    with pytest.raises(WorkflowFailureError) as caught:
        await run_saga(client, settings, input)
    cause = caught.value.cause
    assert isinstance(cause, ApplicationError)
    assert cause.non_retryable
    return SagaResult.model_validate(cause.details[0])


def statuses(result: SagaResult) -> dict[str, ProviderStatus]:
    return {o.provider: o.status for o in result.providers}


@pytest.mark.parametrize("mode", list(StepMode))
@pytest.mark.parametrize("parallel", [True, False])
async def test_the_user_is_created_in_every_database(
    client: Client, saga_settings: Settings, mode: StepMode, parallel: bool
) -> None:
    input = onboarding(step_mode=mode, parallel=parallel)
    async with saga_worker(client, saga_settings):
        result = await run_saga(client, saga_settings, input)
    assert result.status is SagaStatus.COMPLETED
    assert statuses(result) == dict.fromkeys(PROVIDERS, ProviderStatus.CREATED)
    records = await stored(saga_settings, result.user_id)
    assert set(records) == set(PROVIDERS)
    for record in records.values():
        assert record is not None
        assert record.email == input.email.lower()
        assert record.password_hash == HASH
        assert record.profile == {"plan": "pro"}
    assert len({record.created_at for record in records.values() if record}) == 1


@pytest.mark.parametrize("mode", list(StepMode))
@pytest.mark.parametrize("where", ["before", "after"])
@pytest.mark.parametrize("failing", PROVIDERS)
async def test_a_failing_step_leaves_no_trace_anywhere(
    client: Client, saga_settings: Settings, mode: StepMode, where: str, failing: str
) -> None:
    input = onboarding(step_mode=mode, timeout_seconds=1.5)
    async with saga_worker(client, saga_settings, **{failing: {"create_fails": where}}) as used:
        result = await rolled_back(client, saga_settings, input)
    assert result.status is SagaStatus.ROLLED_BACK
    assert result.failure_kind == "SagaTimeout"
    assert statuses(result)[failing] is ProviderStatus.FAILED
    # The first database is the claim, written alone: when it fails, no other one was started.
    claim = result.providers[0].provider
    others = ProviderStatus.NOT_STARTED if failing == claim else ProviderStatus.COMPENSATED
    for other in set(PROVIDERS) - {failing}:
        assert statuses(result)[other] is others
    assert await stored(saga_settings, result.user_id) == dict.fromkeys(PROVIDERS)
    faulty = used[failing]
    assert isinstance(faulty, FaultyProvider)
    assert faulty.create_calls > 1  # a retryable failure is retried until the deadline
    assert faulty.delete_calls >= 1  # and compensated even though it "failed"


async def test_a_duplicate_email_fails_at_its_claim_and_writes_nowhere_else(
    client: Client, saga_settings: Settings
) -> None:
    # The first database of a parallel plan is written alone: a second saga for the email
    # stops there, so it can never win another database while the first saga is under way.
    first = onboarding()
    async with saga_worker(client, saga_settings):
        await run_saga(client, saga_settings, first)
    second = first.model_copy(update={"user_id": str(uuid.uuid4())})
    watched: dict[str, dict[str, Any]] = {name: {} for name in PROVIDERS}
    async with saga_worker(client, saga_settings, **watched) as used:
        result = await rolled_back(client, saga_settings, second)
    assert result.failure_kind == "DuplicateEmail"
    claim, *rest = result.providers
    assert claim.status is ProviderStatus.FAILED
    assert "exists" in (claim.error or "")
    assert all(o.status is ProviderStatus.NOT_STARTED for o in rest)
    calls = {name: p.create_calls for name, p in used.items() if isinstance(p, FaultyProvider)}
    assert calls == {name: int(name == claim.provider) for name in PROVIDERS}
    assert await stored(saga_settings, result.user_id) == dict.fromkeys(PROVIDERS)
    kept = await stored(saga_settings, str(first.user_id))
    assert all(record is not None for record in kept.values())


async def test_a_local_activity_step_keeps_its_failure_kind(
    client: Client, saga_settings: Settings
) -> None:
    # A local activity's non-retryable failure reaches the workflow without an ActivityError
    # around it; its kind must still be DuplicateEmail (a 409), not "ApplicationError".
    first = onboarding(step_mode=StepMode.LOCAL)
    async with saga_worker(client, saga_settings):
        await run_saga(client, saga_settings, first)
        second = first.model_copy(update={"user_id": str(uuid.uuid4())})
        result = await rolled_back(client, saga_settings, second)
    assert result.failure_kind == "DuplicateEmail"
    assert await stored(saga_settings, result.user_id) == dict.fromkeys(PROVIDERS)


async def test_a_provider_down_then_back_is_retried_to_success(
    client: Client, saga_settings: Settings
) -> None:
    async with saga_worker(client, saga_settings, postgres={"unavailable_for": 3}) as used:
        result = await run_saga(client, saga_settings, onboarding())
    assert result.status is SagaStatus.COMPLETED
    faulty = used["postgres"]
    assert isinstance(faulty, FaultyProvider)
    assert faulty.create_calls == 4
    assert all(r is not None for r in (await stored(saga_settings, result.user_id)).values())


async def test_a_retry_after_a_lost_answer_writes_no_duplicate(
    client: Client, saga_settings: Settings
) -> None:
    async with saga_worker(client, saga_settings, sqlite={"lost_answers": 2}) as used:
        result = await run_saga(client, saga_settings, onboarding())
    assert result.status is SagaStatus.COMPLETED
    faulty = used["sqlite"]
    assert isinstance(faulty, FaultyProvider)
    assert faulty.create_calls == 3
    assert faulty.delete_calls == 0
    assert (await stored(saga_settings, result.user_id))["sqlite"] is not None


async def test_cancellation_mid_saga_compensates_to_completion(
    client: Client, saga_settings: Settings
) -> None:
    input = onboarding(parallel=False)
    async with saga_worker(client, saga_settings, sqlite={"create_delay": 2.0}) as used:
        handle = await client.start_workflow(
            UserOnboardingWorkflow.run,
            input,
            id=f"user-onboarding-{uuid.uuid4()}",
            task_queue=saga_settings.temporal_task_queue,
        )
        faulty = used["sqlite"]
        assert isinstance(faulty, FaultyProvider)
        await faulty.create_started.wait()  # postgres is done, sqlite's step is under way
        await handle.cancel()
        with pytest.raises(WorkflowFailureError) as caught:
            await handle.result()
        assert isinstance(caught.value.cause, CancelledError)
    assert (await handle.describe()).status is WorkflowExecutionStatus.CANCELED
    assert await stored(saga_settings, str(input.user_id)) == dict.fromkeys(PROVIDERS)


async def test_a_compensation_that_keeps_failing_is_reported(
    client: Client, saga_settings: Settings
) -> None:
    faults = {
        "sqlite": {"create_fails": "before"},
        "postgres": {"failing_deletes": 100},
    }
    async with saga_worker(client, saga_settings, **faults):
        result = await rolled_back(client, saga_settings, onboarding(timeout_seconds=1))
    assert result.status is SagaStatus.ROLLBACK_INCOMPLETE
    postgres = next(o for o in result.providers if o.provider == "postgres")
    assert postgres.status is ProviderStatus.COMPENSATION_FAILED
    assert "injected delete failure 3" in (postgres.compensation_error or "")
    # Reported, not hidden: the record that could not be removed is still there.
    assert (await stored(saga_settings, result.user_id))["postgres"] is not None


async def test_sequential_mode_does_not_start_steps_after_a_failure(
    client: Client, saga_settings: Settings
) -> None:
    faults = {"postgres": {"create_fails": "before"}, "sqlite": {}}
    async with saga_worker(client, saga_settings, **faults) as used:
        result = await rolled_back(
            client, saga_settings, onboarding(parallel=False, timeout_seconds=1)
        )
    assert statuses(result) == {
        "postgres": ProviderStatus.FAILED,
        **dict.fromkeys(PROVIDERS[1:], ProviderStatus.NOT_STARTED),
    }
    sqlite = used["sqlite"]
    assert isinstance(sqlite, FaultyProvider)
    assert (sqlite.create_calls, sqlite.delete_calls) == (0, 0)


async def test_offboarding_deletes_everywhere_and_is_idempotent(
    client: Client, saga_settings: Settings
) -> None:
    async with saga_worker(client, saga_settings):
        created = await run_saga(client, saga_settings, onboarding())
        results = [
            await client.execute_workflow(
                UserOffboardingWorkflow.run,
                OffboardingInput(user_id=created.user_id),
                id=f"user-offboarding-{uuid.uuid4()}",
                task_queue=saga_settings.temporal_task_queue,
            )
            for _ in range(2)
        ]
    assert statuses(results[0]) == dict.fromkeys(PROVIDERS, ProviderStatus.DELETED)
    assert statuses(results[1]) == dict.fromkeys(PROVIDERS, ProviderStatus.ABSENT)
    assert await stored(saga_settings, created.user_id) == dict.fromkeys(PROVIDERS)


async def test_an_unknown_provider_is_refused_before_any_write(
    client: Client, saga_settings: Settings
) -> None:
    async with saga_worker(client, saga_settings):
        with pytest.raises(WorkflowFailureError) as caught:
            await run_saga(client, saga_settings, onboarding(providers=["postgres", "oracle"]))
    cause = caught.value.cause
    assert isinstance(cause, ApplicationError)
    assert cause.type == "UnknownProvider"
    assert "oracle" in cause.message


def refused_by_postgres(**options: Any) -> OnboardingInput:
    """A user PostgreSQL (and Supabase's jsonb) cannot store: a NUL character in the name.
    The request models refuse it at the edge; the workflow's input does not, so the
    providers' own classification is what is tested here."""
    return onboarding(**options).model_copy(update={"name": "Ada\x00Lovelace"})


@pytest.mark.parametrize("mode", list(StepMode))
@pytest.mark.parametrize(("refusing", "reason"), [("postgres", "0x00"), ("supabase", "22P05")])
async def test_a_record_a_database_refuses_fails_at_once_and_leaves_no_trace(
    client: Client, saga_settings: Settings, mode: StepMode, refusing: str, reason: str
) -> None:
    # One after the other, SQLite first: the refusing database is the step that fails.
    input = refused_by_postgres(
        step_mode=mode, timeout_seconds=20, parallel=False, providers=["sqlite", refusing]
    )
    started = time.monotonic()
    async with saga_worker(client, saga_settings, **{refusing: {}}) as used:
        result = await rolled_back(client, saga_settings, input)
    # Not "database unavailable" retried until the deadline: refused once, final.
    assert time.monotonic() - started < 10
    assert result.failure_kind == "InvalidInput"
    assert statuses(result) == {
        "sqlite": ProviderStatus.COMPENSATED,
        refusing: ProviderStatus.FAILED,
    }
    assert reason in (next(o for o in result.providers if o.provider == refusing).error or "")
    faulty = used[refusing]
    assert isinstance(faulty, FaultyProvider)
    assert faulty.create_calls == 1
    assert await stored(saga_settings, result.user_id) == dict.fromkeys(PROVIDERS)


async def test_in_process_a_record_a_database_refuses_is_invalid_input_at_once(
    saga_settings: Settings,
) -> None:
    providers = enabled_providers(saga_settings)
    input = refused_by_postgres(timeout_seconds=20)
    try:
        plan = plan_saga(saga_settings, list(providers), input.options)
        steps = InProcessSteps(UserSteps(providers), plan)
        started = time.monotonic()
        result = await onboard(plan, input.to_record("unused", datetime.now(UTC)), steps)
    finally:
        for provider in providers.values():
            await provider.close()
    assert time.monotonic() - started < 10
    assert (result.status, result.failure_kind) == (SagaStatus.ROLLED_BACK, "InvalidInput")
    assert {o.provider for o in result.providers if o.status is ProviderStatus.FAILED} <= {
        "postgres",
        "supabase",
    }
    assert await stored(saga_settings, result.user_id) == dict.fromkeys(PROVIDERS)
