"""A worker killed (SIGKILL) in the middle of a saga: another worker finishes it, no duplicate."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import uuid

import asyncpg
from temporalio.client import Client

from nexpo_workflows.config import Settings
from nexpo_workflows.providers import enabled_providers
from nexpo_workflows.users.models import OnboardingInput, SagaResult, SagaStatus
from nexpo_workflows.users.workflows import UserOnboardingWorkflow
from tests.test_users_cli import saga_env
from tests.test_worker_processes import wait_for_pollers, worker_process

HASH = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo"


async def waiting_on_lock(postgres_url: str) -> int:
    connection = await asyncpg.connect(postgres_url)
    try:
        count: int = await connection.fetchval(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE wait_event_type = 'Lock' AND query ILIKE '%nexpo_users%'"
        )
        return count
    finally:
        await connection.close()


async def test_a_killed_worker_mid_saga_is_finished_by_another_without_duplicates(
    cli: list[str],
    cli_env: dict[str, str],
    client: Client,
    saga_settings: Settings,
    postgres_url: str,
) -> None:
    for provider in enabled_providers(saga_settings).values():  # create the schemas
        await provider.connect()
        await provider.close()
    env = {
        **saga_env(cli_env, saga_settings, postgres_url),
        "ONBOARDING_STEP_TIMEOUT_SECONDS": "3",
        "TEMPORAL_WORKER_IDENTITY": "doomed",
    }
    email = f"crash.{uuid.uuid4().hex[:10]}@example.com"
    locker = await asyncpg.connect(postgres_url)
    transaction = locker.transaction()
    await transaction.start()
    # The postgres step will block on this lock: the worker is then surely mid-saga.
    await locker.execute("LOCK TABLE nexpo_users IN ACCESS EXCLUSIVE MODE")
    async with worker_process(cli, env) as doomed:
        await wait_for_pollers(client, saga_settings.temporal_task_queue, {"doomed"})
        handle = await client.start_workflow(
            UserOnboardingWorkflow.run,
            OnboardingInput(email=email, name="Crash Test", password_hash=HASH),
            id=f"user-onboarding-{uuid.uuid4()}",
            task_queue=saga_settings.temporal_task_queue,
        )
        for _ in range(200):
            if await waiting_on_lock(postgres_url):
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the postgres step never reached the database")
        doomed.send_signal(signal.SIGKILL)
        await doomed.wait()
    await transaction.rollback()
    await locker.close()

    async with worker_process(cli, {**env, "TEMPORAL_WORKER_IDENTITY": "rescuer"}):
        result: SagaResult = await asyncio.wait_for(handle.result(), 60)
    assert result.status is SagaStatus.COMPLETED

    connection = await asyncpg.connect(postgres_url)
    try:
        rows = await connection.fetch("SELECT id FROM nexpo_users WHERE email = $1", email)
    finally:
        await connection.close()
    assert [row["id"] for row in rows] == [result.user_id]
    with sqlite3.connect(saga_settings.sqlite_file) as db:
        ids = [row[0] for row in db.execute("SELECT id FROM nexpo_users WHERE email = ?", (email,))]
    assert ids == [result.user_id]
