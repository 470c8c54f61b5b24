"""The copy's read ahead in a process of its own: it gives exactly what the worker reads, a
process killed mid-copy is replaced and its batch read by the worker, a worker killed outright
takes the process with it, and a process that cannot start leaves the reads to the worker."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from temporalio.client import Client

from nexpo_workflows.config import Settings
from nexpo_workflows.providers import enabled_providers
from nexpo_workflows.providers.base import RecordBatch
from nexpo_workflows.services import Services
from nexpo_workflows.sync import read_ahead
from nexpo_workflows.sync.activities import READ_AHEAD_PROCESS_MIN_BATCH
from nexpo_workflows.sync.datasets import plan_dataset
from nexpo_workflows.sync.models import (
    PositionKind,
    SyncInput,
    SyncPlan,
    SyncStatus,
    Watermark,
)
from nexpo_workflows.sync.read_ahead import ReadAheadError, ReadAheadProcess
from nexpo_workflows.sync.reading import BatchReader, Encodings, PreparedBatch
from nexpo_workflows.sync.workflow import DataSyncWorkflow, sync_workflow_id
from nexpo_workflows.worker import build_worker
from tests.sync_source import Source, assert_targets_equal_source, eventually, run_sync
from tests.test_sync_encoded import products_database

START = Watermark(kind=PositionKind.SNAPSHOT, version=1_767_225_600_123_456, id="")
PRODUCTS = {
    "name": "products",
    "source": {"provider": "postgres", "table": "products"},
    "targets": ["sqlite"],
    "schema": "tests.test_sync_encoded:Product",
}
SQL_TARGET = Encodings(json=True, values=False)
# A copy long enough for the process to start and be killed while it goes on.
ROWS = 60 * READ_AHEAD_PROCESS_MIN_BATCH


@pytest.fixture
async def products() -> AsyncIterator[str]:
    async with products_database() as url:
        yield url


def products_settings(url: str, tmp_path: Path, **overrides: Any) -> Settings:
    return Settings(
        _env_file=None,
        enable_postgres=True,
        postgres_url=url,
        enable_sqlite=True,
        sqlite_path=tmp_path / "target.db",
        data_dir=tmp_path,
        sync_batch_size=50,
        sync_datasets=[PRODUCTS],
        **overrides,
    )


async def started(process: ReadAheadProcess, plan: SyncPlan, encodings: Encodings) -> int:
    """Asks until the process is ready (the first asks start it); its pid."""

    async def ready() -> int | None:
        reading = process.read(plan, START, None, encodings)
        if reading is None:
            return None
        try:
            await reading
        except ReadAheadError:  # a process gone: the next ask starts another
            return None
        return process.pid

    return await eventually(ready)


def columns(prepared: PreparedBatch) -> tuple[Any, ...]:
    records: RecordBatch = prepared.records
    return (
        records.ids,
        records.versions,
        records.deleted,
        records.hashes(),
        records.json_data(),
        records.values(),
        [(r.id, r.data) for r in prepared.quarantine],
    )


async def test_the_process_reads_what_the_worker_reads(products: str, tmp_path: Path) -> None:
    # One row the schema refuses: its batch is read row by row, the row quarantined.
    connection = await asyncpg.connect(products.replace("+asyncpg", ""))
    try:
        await connection.execute("UPDATE products SET name = '' WHERE id = 'p062'")
    finally:
        await connection.close()
    settings = products_settings(products, tmp_path)
    providers = enabled_providers(settings)
    here = BatchReader(settings, providers, fetch_ahead=False)
    plan = plan_dataset(settings, list(providers), "products")
    process = ReadAheadProcess(settings)
    try:
        pid = await started(process, plan, SQL_TARGET)
        assert pid != os.getpid()
        for encodings in (SQL_TARGET, Encodings(json=False, values=True)):
            after, batches = START, 0
            while True:
                reading = process.read(plan, after, None, encodings)
                assert reading is not None
                batch, prepared = await reading
                expected_batch, expected = await here.copy_batch(plan, after, None, encodings)
                assert batch == expected_batch
                if encodings.values:
                    assert len(prepared.records.data) == len(prepared.records)
                else:
                    # Only the JSON text crossed; the values are parsed from it on demand.
                    assert prepared.records.data == [] or not prepared.records.ids
                assert columns(prepared) == columns(expected)
                if not batch.count:
                    break
                batches += 1
                assert batch.last is not None
                after = batch.last
            assert batches == 3  # 120 rows in batches of 50
        assert process.pid == pid  # one process served every batch
    finally:
        await process.close()
        for provider in providers.values():
            await provider.close()
    assert not _alive(pid)


async def test_a_killed_process_is_replaced_and_its_batch_read_again(
    products: str, tmp_path: Path
) -> None:
    settings = products_settings(products, tmp_path)
    providers = enabled_providers(settings)
    plan = plan_dataset(settings, list(providers), "products")
    process = ReadAheadProcess(settings)
    try:
        first = await started(process, plan, SQL_TARGET)
        os.kill(first, signal.SIGKILL)
        # The step that wanted the batch reads it itself; a new process serves the next.
        reading = process.read(plan, START, None, SQL_TARGET)
        if reading is not None:  # asked before the loss was seen
            with pytest.raises(ReadAheadError):
                await reading
        second = await started(process, plan, SQL_TARGET)
        assert second != first
        reading = process.read(plan, START, None, SQL_TARGET)
        assert reading is not None
        batch, _ = await reading
        assert batch.count == 50
    finally:
        await process.close()
        for provider in providers.values():
            await provider.close()


async def test_a_stuck_process_is_killed_and_replaced(
    products: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = products_settings(products, tmp_path)
    plan = plan_dataset(settings, ["postgres", "sqlite"], "products")
    monkeypatch.setattr(read_ahead, "READ_TIMEOUT_SECONDS", 1.0)
    process = ReadAheadProcess(settings)
    try:
        stuck = await started(process, plan, SQL_TARGET)
        os.kill(stuck, signal.SIGSTOP)  # as a source that never answers would leave it
        reading = process.read(plan, START, None, SQL_TARGET)
        assert reading is not None
        with pytest.raises(ReadAheadError, match="no answer"):
            await reading
        await eventually(lambda: _gone(stuck), seconds=10)
        assert await started(process, plan, SQL_TARGET) != stuck
    finally:
        await process.close()


async def test_the_process_ends_with_a_worker_killed_outright(
    products: str, tmp_path: Path
) -> None:
    program = (
        "import asyncio, sys\n"
        "from nexpo_workflows.config import Settings\n"
        "from nexpo_workflows.providers import enabled_provider_names\n"
        "from nexpo_workflows.sync.datasets import plan_dataset\n"
        "from nexpo_workflows.sync.read_ahead import ReadAheadProcess\n"
        "from nexpo_workflows.sync.reading import Encodings\n"
        "from nexpo_workflows.sync.models import PositionKind, Watermark\n"
        "async def main():\n"
        "    settings = Settings(_env_file=None)\n"
        "    plan = plan_dataset(settings, enabled_provider_names(settings), 'products')\n"
        "    process = ReadAheadProcess(settings)\n"
        "    start = Watermark(kind=PositionKind.SNAPSHOT, version=1, id='')\n"
        "    while process.read(plan, start, None, Encodings(json=True, values=False)) is None:\n"
        "        await asyncio.sleep(0.05)\n"
        "    print(process.pid, flush=True)\n"
        "    await asyncio.sleep(3600)\n"
        "asyncio.run(main())\n"
    )
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(entry for entry in sys.path if entry),
        "ENABLE_POSTGRES": "true",
        "POSTGRES_URL": products,
        "ENABLE_SQLITE": "true",
        "SQLITE_PATH": str(tmp_path / "target.db"),
        "DATA_DIR": str(tmp_path),
        "SYNC_DATASETS": json.dumps([PRODUCTS]),
    }
    worker = await asyncio.create_subprocess_exec(
        sys.executable, "-c", program, env=environment, stdout=asyncio.subprocess.PIPE
    )
    assert worker.stdout is not None
    try:
        line = await asyncio.wait_for(worker.stdout.readline(), 60)
        child = int(line)
        assert _alive(child)
    finally:
        worker.kill()
        await worker.wait()
    await eventually(lambda: _gone(child), seconds=10)


async def test_a_process_that_cannot_start_leaves_the_reads_to_the_worker(
    products: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    settings = products_settings(products, tmp_path)
    plan = plan_dataset(settings, ["postgres", "sqlite"], "products")
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-such-python"))
    process = ReadAheadProcess(settings)
    try:
        assert process.read(plan, START, None, SQL_TARGET) is None
        await asyncio.sleep(0.5)
        for _ in range(3):
            assert process.read(plan, START, None, SQL_TARGET) is None
        assert process.pid is None
        assert "no read-ahead process" in caplog.text
        assert caplog.text.count("no read-ahead process") == 1  # tried once, said once
    finally:
        await process.close()


async def test_a_sync_whose_read_ahead_process_is_killed_mid_copy_loses_nothing(
    client: Client, make_settings: Callable[..., Settings], source_url: str, source: Source
) -> None:
    settings = make_settings(
        enable_postgres=True,
        postgres_url=source_url,
        enable_sqlite=True,
        sync_batch_size=READ_AHEAD_PROCESS_MIN_BATCH,
        sync_step_deadline_seconds=60,
        sync_datasets=[
            {
                "name": "items",
                "source": {"provider": "postgres", "table": "items"},
                "schema": "tests.sync_source:Item",
            }
        ],
    )
    await source.insert(ROWS)
    services = Services.from_settings(settings, client)
    read_ahead = services.read_ahead
    assert read_ahead is not None  # on by default
    try:
        async with build_worker(client, services):
            handle = await client.start_workflow(
                DataSyncWorkflow.run,
                SyncInput(dataset="items"),
                id=sync_workflow_id("items"),
                task_queue=settings.temporal_task_queue,
            )
            killed = await eventually(lambda: _ready(read_ahead))
            os.kill(killed, signal.SIGKILL)
            replaced = await eventually(lambda: _other(read_ahead, killed))
            result = await handle.result()
            # Caught up: the next run finds nothing more.
            again = await run_sync(client, settings)
        assert result.status is SyncStatus.COMPLETED
        assert result.progress.rows_synced == ROWS
        assert replaced != killed
        await assert_targets_equal_source(settings, source)
        assert again.progress.rows_seen == 0
    finally:
        await services.close()


async def _ready(process: ReadAheadProcess) -> int | None:
    return process.pid


async def _other(process: ReadAheadProcess, killed: int) -> int | None:
    pid = process.pid
    return pid if pid is not None and pid != killed else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (ended, not yet reaped by its parent) counts as ended.
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rpartition(")")[2].split()[0] != "Z"


async def _gone(pid: int) -> bool | None:
    return True if not _alive(pid) else None
