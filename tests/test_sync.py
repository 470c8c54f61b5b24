"""DataSyncWorkflow on a real Temporal server, PostgreSQL as the source, real targets."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
from collections.abc import Callable
from typing import Any

import pytest
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import ApplicationError

from nexpo_workflows.config import Settings
from nexpo_workflows.services import Services
from nexpo_workflows.sync.datasets import QUARANTINE_PREFIX
from nexpo_workflows.sync.models import SyncInput, SyncProgress, SyncResult, SyncStatus
from nexpo_workflows.sync.workflow import DataSyncWorkflow, sync_workflow_id
from nexpo_workflows.worker import build_worker
from tests.conftest import saga_worker
from tests.faults import FaultyProvider
from tests.sync_source import (
    DATASET,
    ITEMS_DATASET,
    Source,
    assert_targets_equal_source,
    eventually,
    progress_of,
    run_sync,
    sync_worker_env,
)
from tests.test_worker_processes import worker_process


async def test_full_then_incremental_sync_with_deletes(
    client: Client, sync_settings: Settings, source: Source
) -> None:
    ids = await source.insert(130)
    services = Services.from_settings(sync_settings, client)
    async with build_worker(client, services):
        first = await run_sync(client, sync_settings)
        assert first.status is SyncStatus.COMPLETED
        assert first.progress.rows_synced == 130
        # 130 rows in batches of 40, 3 batches per run: the run continued as new once.
        assert first.progress.batches == 4
        assert first.progress.runs == 2
        await assert_targets_equal_source(sync_settings, source)

        await source.update(ids[3], name="renamed")
        await source.update(ids[7], deleted=True)
        await source.insert(5, prefix="late")
        second = await run_sync(client, sync_settings)
        assert second.progress.rows_synced == 7
        await assert_targets_equal_source(sync_settings, source)
        sqlite = services.providers["sqlite"]
        stored = {r.id: r for r in await sqlite.get_records(DATASET, [ids[3], ids[7]])}
        assert stored[ids[3]].data["name"] == "renamed"
        assert stored[ids[7]].deleted is True

        nothing = await run_sync(client, sync_settings)
        assert nothing.progress.rows_seen == 0
    await services.close()


async def test_every_real_target_receives_full_and_incremental_syncs(
    client: Client,
    make_settings: Callable[..., Settings],
    provider_servers: dict[str, Any],
    source_url: str,
    source: Source,
) -> None:
    """PostgreSQL to SQLite, MongoDB, Cosmos DB and Supabase, each a real server."""
    settings = make_settings(
        **{**provider_servers, "postgres_url": source_url},
        sync_batch_size=25,
        sync_datasets=[ITEMS_DATASET],
    )
    ids = await source.insert(60)
    services = Services.from_settings(settings, client)
    try:
        async with build_worker(client, services):
            first = await run_sync(client, settings)
            assert first.progress.rows_synced == 60
            await assert_targets_equal_source(settings, source)
            await source.update(ids[0], name="renamed")
            await source.update(ids[1], deleted=True)
            second = await run_sync(client, settings)
        assert second.progress.rows_synced == 2
        await assert_targets_equal_source(settings, source)
        for name in ("mongodb", "cosmosdb", "supabase", "sqlite"):
            stored = {r.id: r for r in await services.providers[name].get_records(DATASET, ids)}
            assert len(stored) == 60, name
            assert stored[ids[0]].data["name"] == "renamed", name
            assert stored[ids[1]].deleted, name
    finally:
        await services.close()


async def test_invalid_rows_are_quarantined_not_synced(
    client: Client, sync_settings: Settings, source: Source
) -> None:
    good = await source.insert(10)
    bad = await source.insert(3, price="-1", prefix="bad")
    services = Services.from_settings(sync_settings, client)
    async with build_worker(client, services):
        result = await run_sync(client, sync_settings)
    assert result.progress.rows_quarantined == 3
    assert result.progress.rows_synced == 10
    sqlite, postgres = services.providers["sqlite"], services.providers["postgres"]
    assert {r.id for r in await sqlite.get_records(DATASET, good + bad)} == set(good)
    quarantined = await postgres.get_records(QUARANTINE_PREFIX + DATASET, bad)
    assert {r.id for r in quarantined} == set(bad)
    assert all("price" in r.data["reason"] for r in quarantined)
    await services.close()


async def test_a_lost_write_is_found_by_verify_and_repaired(
    client: Client, sync_settings: Settings, source: Source
) -> None:
    await source.insert(20)
    async with saga_worker(client, sync_settings, sqlite={"lost_upserts": 1}):
        result = await run_sync(client, sync_settings)
    assert result.progress.rows_repaired == 20
    await assert_targets_equal_source(sync_settings, source)


async def test_an_audit_repairs_a_drifted_target_row(
    client: Client, sync_settings: Settings, source: Source
) -> None:
    ids = await source.insert(50)
    services = Services.from_settings(sync_settings, client)
    async with build_worker(client, services):
        await run_sync(client, sync_settings)
        # Somebody edits a target behind the sync's back; the source does not change, so
        # only an audit (verify every range, repair what differs) can see it.
        sqlite = services.providers["sqlite"]
        drifted = (await sqlite.get_records(DATASET, [ids[2]]))[0]
        tampered = {**drifted.data, "name": "tampered"}
        await sqlite.upsert_records(DATASET, [drifted.model_copy(update={"data": tampered})])
        await sqlite.delete_records(DATASET, [ids[45]])
        incremental = await run_sync(client, sync_settings)
        assert incremental.progress.rows_seen == 0
        audit = await run_sync(client, sync_settings, audit=True)
    assert audit.progress.rows_repaired == 2
    assert audit.progress.rows_seen == 50
    await assert_targets_equal_source(sync_settings, source)
    await services.close()


async def test_a_target_that_stays_wrong_fails_the_run_naming_the_rows(
    client: Client, sync_settings: Settings, source: Source
) -> None:
    ids = await source.insert(5)
    async with saga_worker(client, sync_settings, sqlite={"lost_upserts": 10**9}):
        with pytest.raises(WorkflowFailureError) as failure:
            await run_sync(client, sync_settings)
    cause = failure.value.cause
    assert isinstance(cause, ApplicationError)
    assert cause.type == "SyncVerificationFailed"
    assert ids[0] in cause.message
    report = SyncResult.model_validate(cause.details[0])
    assert set(report.unrepaired[0].ids) == set(ids)


async def test_an_unknown_dataset_is_refused(
    client: Client, sync_settings: Settings, worker: None
) -> None:
    with pytest.raises(WorkflowFailureError) as failure:
        await client.execute_workflow(
            DataSyncWorkflow.run,
            SyncInput(dataset="nope"),
            id=sync_workflow_id("nope"),
            task_queue=sync_settings.temporal_task_queue,
        )
    assert "no dataset 'nope'" in str(failure.value.cause)


async def test_a_target_down_mid_run_then_back(
    client: Client, sync_settings: Settings, source: Source
) -> None:
    await source.insert(200)
    async with saga_worker(client, sync_settings, sqlite={}) as providers:
        flaky = providers["sqlite"]
        assert isinstance(flaky, FaultyProvider)
        handle = await client.start_workflow(
            DataSyncWorkflow.run,
            SyncInput(dataset=DATASET),
            id=sync_workflow_id(DATASET),
            task_queue=sync_settings.temporal_task_queue,
        )
        await eventually(lambda: progress_of(handle, lambda p: p.batches >= 1))
        flaky.upsert_down = True
        calls = flaky.upsert_calls

        async def two_failed_writes() -> bool | None:
            return flaky.upsert_calls >= calls + 2 or None

        await eventually(two_failed_writes)
        flaky.upsert_down = False
        result: SyncResult = await handle.result()
    assert result.status is SyncStatus.COMPLETED
    assert result.progress.rows_synced == 200
    await assert_targets_equal_source(sync_settings, source)


ROWS = 1000


async def test_a_worker_killed_mid_run_resumes_without_duplicates_or_gaps(
    cli: list[str],
    cli_env: dict[str, str],
    client: Client,
    sync_settings: Settings,
    source: Source,
    source_url: str,
) -> None:
    await source.insert(ROWS)
    env = sync_worker_env(cli_env, sync_settings, batch_size=ROWS // 20)
    handle = await client.start_workflow(
        DataSyncWorkflow.run,
        SyncInput(dataset=DATASET),
        id=sync_workflow_id(DATASET),
        task_queue=sync_settings.temporal_task_queue,
    )
    seen: list[SyncProgress] = []

    def three_batches_done(progress: SyncProgress) -> bool:
        seen.append(progress)
        return progress.batches >= 3

    async with worker_process(cli, env, TEMPORAL_WORKER_IDENTITY="doomed") as doomed:
        await eventually(lambda: progress_of(handle, three_batches_done), 60)
        doomed.send_signal(signal.SIGKILL)
        await doomed.wait()
    assert seen[-1].rows_synced < ROWS
    async with worker_process(cli, env, TEMPORAL_WORKER_IDENTITY="rescuer"):
        result: SyncResult = await asyncio.wait_for(handle.result(), 120)
    assert result.progress.rows_synced == ROWS
    await assert_targets_equal_source(sync_settings, source)
    with sqlite3.connect(sync_settings.sqlite_file) as db:
        count, distinct = db.execute(
            "SELECT count(*), count(DISTINCT id) FROM nexpo_records WHERE dataset = ?",
            (DATASET,),
        ).fetchone()
    assert count == distinct == ROWS
