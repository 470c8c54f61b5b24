"""The sync tests' source: a table of items in PostgreSQL, written as an application would,
and the checks that every target holds exactly what it holds."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
from pydantic import BaseModel, Field
from temporalio.client import Client, WorkflowHandle, WorkflowQueryFailedError
from temporalio.service import RPCError

from nexpo_workflows.config import Settings
from nexpo_workflows.providers import enabled_providers
from nexpo_workflows.sync.models import SyncInput, SyncProgress, SyncResult
from nexpo_workflows.sync.workflow import DataSyncWorkflow, sync_workflow_id

T = TypeVar("T")
DATASET = "items"
# The test dataset as SYNC_DATASETS holds it.
ITEMS_DATASET: dict[str, Any] = {
    "name": DATASET,
    "source": {"provider": "postgres", "table": "items"},
    "schema": "tests.sync_source:Item",
}
START = datetime(2026, 1, 1, tzinfo=UTC)


class Item(BaseModel):
    """The schema rows of the test dataset must satisfy."""

    id: str
    name: str = Field(min_length=1)
    price: Decimal = Field(ge=0)
    updated_at: datetime


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


def sync_env(cli_env: dict[str, str], settings: Settings, source_url: str) -> dict[str, str]:
    """The environment of a CLI process that syncs the items of ``settings``."""
    datasets = [d.model_dump(mode="json", by_alias=True) for d in settings.sync_datasets]
    return {
        **cli_env,
        "ENABLE_POSTGRES": "true",
        "POSTGRES_URL": source_url,
        "ENABLE_SQLITE": "true",
        "SQLITE_PATH": str(settings.sqlite_file),
        "SYNC_DATASETS": json.dumps(datasets),
    }


def sync_worker_env(cli_env: dict[str, str], settings: Settings, batch_size: int) -> dict[str, str]:
    """The environment of a worker process that syncs the items of ``settings``."""
    return {
        **sync_env(cli_env, settings, settings.postgres_url.get_secret_value()),
        "SYNC_BATCH_SIZE": str(batch_size),
        # The tests' package (the schema), before whatever the session runs on.
        "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).parents[1]), cli_env.get("PYTHONPATH", "")]
        ),
    }


async def run_sync(
    client: Client, settings: Settings, dataset: str = DATASET, **options: Any
) -> SyncResult:
    return await client.execute_workflow(
        DataSyncWorkflow.run,
        SyncInput(dataset=dataset, **options),
        id=sync_workflow_id(dataset),
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
