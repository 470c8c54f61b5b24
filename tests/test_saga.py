"""The saga kernel outside a workflow: the onboarding saga in-process (ENABLE_TEMPORAL=false),
on real PostgreSQL and SQLite, with faults from tests/faults.py. Inside workflows the kernel
is exercised by the onboarding, provisioning and content tests."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import pytest

from nexpo_workflows.config import Settings
from nexpo_workflows.providers import DatabaseProvider, UserRecord, enabled_providers
from nexpo_workflows.users.models import (
    OnboardingInput,
    ProviderStatus,
    SagaOptions,
    SagaPlan,
    SagaStatus,
)
from nexpo_workflows.users.saga import TIMEOUT_KIND, onboard
from nexpo_workflows.users.steps import InProcessSteps, UserSteps, plan_saga
from tests.faults import FaultyProvider
from tests.test_onboarding import HASH

PROVIDERS = ["postgres", "sqlite"]


@pytest.fixture
def in_process_settings(make_settings: Callable[..., Settings], postgres_url: str) -> Settings:
    return make_settings(
        enable_temporal=False,
        enable_postgres=True,
        postgres_url=postgres_url,
        enable_sqlite=True,
        onboarding_parallel=False,
        # A step that keeps failing retries until the saga's deadline: a short one.
        onboarding_timeout_seconds=3,
        onboarding_step_timeout_seconds=2,
        onboarding_compensation_attempts=3,
    )


@asynccontextmanager
async def in_process_saga(
    settings: Settings, **faults: dict[str, Any]
) -> AsyncIterator[tuple[SagaPlan, InProcessSteps, dict[str, DatabaseProvider]]]:
    providers = enabled_providers(settings)
    for name, fault in faults.items():
        providers[name] = FaultyProvider(providers[name], **fault)
    plan = plan_saga(settings, list(providers), SagaOptions())
    try:
        yield plan, InProcessSteps(UserSteps(providers), plan), providers
    finally:
        for provider in providers.values():
            await provider.close()


def new_user() -> UserRecord:
    email = f"saga-{uuid.uuid4().hex[:12]}@example.com"
    input = OnboardingInput(email=email, name="Saga Test", password_hash=HASH)
    return input.to_record(str(uuid.uuid4()), datetime.now(UTC))


async def stored(settings: Settings, user_id: str) -> dict[str, bool]:
    readers = enabled_providers(settings)
    try:
        return {name: await p.get_user(user_id) is not None for name, p in readers.items()}
    finally:
        for provider in readers.values():
            await provider.close()


async def test_in_process_a_write_whose_answer_was_lost_is_compensated(
    in_process_settings: Settings,
) -> None:
    user = new_user()
    async with in_process_saga(in_process_settings, sqlite={"create_fails": "after"}) as (
        plan,
        steps,
        _,
    ):
        result = await onboard(plan, user, steps)
    assert (result.status, result.failure_kind) == (SagaStatus.ROLLED_BACK, TIMEOUT_KIND)
    statuses = {o.provider: o.status for o in result.providers}
    assert statuses == {"postgres": ProviderStatus.COMPENSATED, "sqlite": ProviderStatus.FAILED}
    assert await stored(in_process_settings, user.id) == dict.fromkeys(PROVIDERS, False)


async def test_in_process_a_cancelled_saga_compensates_every_step_it_started(
    in_process_settings: Settings,
) -> None:
    """Cancelled while the SQLite write is under way (after PostgreSQL's), the saga undoes
    both before the cancellation goes on, the interrupted write included."""
    user = new_user()
    async with in_process_saga(in_process_settings, sqlite={"create_delay": 1.5}) as (
        plan,
        steps,
        providers,
    ):
        faulty = providers["sqlite"]
        assert isinstance(faulty, FaultyProvider)
        saga = asyncio.create_task(onboard(plan, user, steps))
        await asyncio.wait_for(faulty.create_started.wait(), 10)
        saga.cancel()
        with pytest.raises(asyncio.CancelledError):
            await saga
        assert faulty.delete_calls == 1
    assert await stored(in_process_settings, user.id) == dict.fromkeys(PROVIDERS, False)
