"""DataSyncWorkflow on a real Temporal server, PostgreSQL as the source, real targets."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import pytest
from pydantic import BaseModel, Field
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle, WorkflowQueryFailedError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError

from nexpo_workflows.config import Settings
from nexpo_workflows.providers import enabled_providers
from nexpo_workflows.services import Services
from nexpo_workflows.sync.datasets import QUARANTINE_PREFIX
from nexpo_workflows.sync.models import SyncInput, SyncProgress, SyncResult, SyncStatus
from nexpo_workflows.sync.workflow import DataSyncWorkflow, sync_workflow_id
from nexpo_workflows.worker import build_worker
from tests.conftest import saga_worker
from tests.faults import FaultyProvider
from tests.servers.postgres import fresh_database
from tests.test_worker_processes import worker_process

T = TypeVar("T")
DATASET = "items"
# The test dataset as SYNC_DATASETS holds it.
ITEMS_DATASET: dict[str, Any] = {
    "name": DATASET,
    "source": {"provider": "postgres", "table": "items"},
    "schema": "tests.test_sync:Item",
}
START = datetime(2026, 1, 1, tzinfo=UTC)


class Item(BaseModel):
    """The schema rows of the test dataset must satisfy."""

    id: str
    name: str = Field(min_length=1)
    price: Decimal = Field(ge=0)
    updated_at: datetime


@pytest.fixture
async def source_url(logical_postgres: str) -> AsyncIterator[str]:
    async with fresh_database(logical_postgres) as url:
        await Source(url).create_table()
        yield url


class Source:
    """Writes to the source table as an application would."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.clock = START
        # Keys deleted from the table: no target may hold them afterwards.
        self.deleted: set[str] = set()

    def tick(self) -> datetime:
        self.clock += timedelta(milliseconds=1)
        return self.clock

    async def create_table(self) -> None:
        await self.execute(
            "CREATE TABLE items (id text PRIMARY KEY, name text NOT NULL, price numeric NOT NULL,"
            " updated_at timestamptz NOT NULL, deleted boolean NOT NULL DEFAULT false)"
        )

    async def execute(self, sql: str, *args: Any) -> None:
        connection = await asyncpg.connect(self.url)
        try:
            await connection.execute(sql, *args)
        finally:
            await connection.close()

    async def insert(self, count: int, *, price: str = "9.50", prefix: str = "item") -> list[str]:
        ids = [f"{prefix}-{n:05d}" for n in range(count)]
        connection = await asyncpg.connect(self.url)
        try:
            await connection.executemany(
                "INSERT INTO items (id, name, price, updated_at) VALUES ($1, $2, $3, $4)",
                [(i, f"name of {i}", Decimal(price), self.tick()) for i in ids],
            )
        finally:
            await connection.close()
        return ids

    async def update(self, item_id: str, **values: Any) -> None:
        sets = ", ".join(f"{name} = ${n + 2}" for n, name in enumerate(values))
        await self.execute(
            f"UPDATE items SET {sets}, updated_at = ${len(values) + 2} WHERE id = $1",
            item_id,
            *values.values(),
            self.tick(),
        )

    async def delete(self, *item_ids: str) -> None:
        await self.execute("DELETE FROM items WHERE id = ANY($1)", list(item_ids))
        self.deleted.update(item_ids)

    async def contents(self) -> dict[str, tuple[bool, dict[str, Any]]]:
        """Every row as targets must hold it: (tombstone, fields validated by the schema)."""
        connection = await asyncpg.connect(self.url)
        try:
            rows = await connection.fetch("SELECT * FROM items")
        finally:
            await connection.close()
        return {
            row["id"]: (
                row["deleted"],
                {} if row["deleted"] else Item.model_validate(dict(row)).model_dump(mode="json"),
            )
            for row in rows
        }


@pytest.fixture
def source(source_url: str) -> Source:
    return Source(source_url)


@pytest.fixture
def sync_settings(make_settings: Callable[..., Settings], source_url: str) -> Settings:
    return make_settings(
        enable_postgres=True,
        postgres_url=source_url,
        enable_sqlite=True,
        sync_batch_size=40,
        sync_batches_per_run=3,
        sync_step_deadline_seconds=60,
        sync_datasets=[ITEMS_DATASET],
    )


async def run_sync(client: Client, settings: Settings, **options: Any) -> SyncResult:
    return await client.execute_workflow(
        DataSyncWorkflow.run,
        SyncInput(dataset=DATASET, **options),
        id=sync_workflow_id(DATASET),
        task_queue=settings.temporal_task_queue,
    )


async def target_contents(
    settings: Settings, name: str, ids: list[str]
) -> dict[str, tuple[bool, dict[str, Any]]]:
    provider = enabled_providers(settings)[name]
    try:
        return {r.id: (r.deleted, r.data) for r in await provider.get_records(DATASET, ids)}
    finally:
        await provider.close()


async def assert_targets_equal_source(settings: Settings, source: Source) -> None:
    """Every target holds every row of the source, field by field, and none of the rows
    deleted from it (read over new connections)."""
    expected = await source.contents()
    ids = [*expected, *(source.deleted - set(expected))]
    targets = [name for name in enabled_providers(settings) if name != "postgres"]
    assert targets
    for target in targets:
        held = await target_contents(settings, target, ids)
        assert held == expected, target


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
    env = {
        **cli_env,
        "ENABLE_POSTGRES": "true",
        "POSTGRES_URL": source_url,
        "ENABLE_SQLITE": "true",
        "SQLITE_PATH": str(sync_settings.sqlite_file),
        "SYNC_BATCH_SIZE": str(ROWS // 20),
        "SYNC_DATASETS": json.dumps(
            [d.model_dump(by_alias=True) for d in sync_settings.sync_datasets]
        ),
        "PYTHONPATH": str(Path(__file__).parents[1]),
    }
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


async def progress_of(
    handle: WorkflowHandle[Any, SyncResult], condition: Callable[[SyncProgress], bool]
) -> bool | None:
    """True once the run's progress meets ``condition``; None until then (for ``eventually``)."""
    try:
        return condition(await handle.query(DataSyncWorkflow.progress)) or None
    except (WorkflowQueryFailedError, RPCError):
        return None  # no worker has run the workflow task yet


# Scheduled starts, visibility and worker restarts take a moment: waits are bounded by this.
WAIT_SECONDS = 30.0


async def eventually(probe: Callable[[], Awaitable[T | None]], seconds: float = WAIT_SECONDS) -> T:
    """The first answer of ``probe`` that is not None, polling for at most ``seconds``."""
    deadline = asyncio.get_running_loop().time() + seconds
    while (answer := await probe()) is None:
        assert asyncio.get_running_loop().time() < deadline, f"nothing within {seconds} s"
        await asyncio.sleep(0.05)
    return answer
