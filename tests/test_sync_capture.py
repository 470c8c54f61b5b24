"""Change capture from the source's log: what polling a version column misses, found here.

PostgreSQL runs in a private cluster at wal_level=logical (``logical_postgres``); the sync's
replication slot is read in ``pg_replication_slots`` directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import random
import re
import signal
import sqlite3
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from pymongo import AsyncMongoClient
from sqlalchemy import text
from temporalio.client import Client, WorkflowFailureError
from temporalio.service import RPCError

from nexpo_workflows.config import Settings
from nexpo_workflows.ports import free_port
from nexpo_workflows.providers import enabled_providers
from nexpo_workflows.providers.sqlserver import SQLServerProvider
from nexpo_workflows.services import Services
from nexpo_workflows.sync.capture import change_log
from nexpo_workflows.sync.capture.postgres import slot_name
from nexpo_workflows.sync.datasets import QUARANTINE_PREFIX, USERS_DATASET, WATERMARKS_DATASET
from nexpo_workflows.sync.models import SyncInput, SyncResult, SyncSource
from nexpo_workflows.sync.runs import reset_capture
from nexpo_workflows.sync.workflow import DataSyncWorkflow, sync_workflow_id
from nexpo_workflows.users.models import OffboardingInput
from nexpo_workflows.users.workflows import UserOffboardingWorkflow
from nexpo_workflows.worker import build_worker
from tests.conftest import saga_worker
from tests.servers.postgres import fresh_database
from tests.sync_source import (
    DATASET,
    ITEMS_DATASET,
    START,
    Source,
    assert_targets_equal_source,
    eventually,
    run_sync,
    sync_worker_env,
)
from tests.test_onboarding import onboarding, run_saga
from tests.test_worker_processes import wait_for_pollers, worker_process


async def slot(url: str) -> tuple[int, int]:
    """The slot's confirmed position and the server's current one, as integers."""
    connection = await asyncpg.connect(url)
    try:
        row = await connection.fetchrow(
            "SELECT pg_wal_lsn_diff(confirmed_flush_lsn, '0/0')::bigint AS confirmed,"
            " pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint AS current"
            " FROM pg_replication_slots WHERE slot_name = $1",
            slot_name(DATASET),
        )
    finally:
        await connection.close()
    assert row is not None, "no replication slot"
    return int(row["confirmed"]), int(row["current"])


async def test_a_row_committed_late_with_an_old_timestamp_is_synced(
    client: Client, sync_settings: Settings, source: Source
) -> None:
    """The transaction that inserts a row stamped before newer rows commits after they were
    synced (a retried saga step does this): polling's watermark has moved past its stamp."""
    await source.insert(3)
    services = Services.from_settings(sync_settings, client)
    try:
        async with build_worker(client, services):
            await run_sync(client, sync_settings)
            late = await asyncpg.connect(source.url)
            try:
                transaction = late.transaction()
                await transaction.start()
                await late.execute(
                    "INSERT INTO items (id, name, price, updated_at) VALUES ($1, $2, 1, $3)",
                    "late-insert",
                    "stamped early",
                    START - timedelta(days=1),
                )
                newer = await source.insert(2, prefix="newer")
                assert (await run_sync(client, sync_settings)).progress.rows_synced == 2
                await transaction.commit()
            finally:
                await late.close()
            # An update that moves a row's timestamp backwards.
            await source.execute(
                "UPDATE items SET name = 'moved back', updated_at = $2 WHERE id = $1",
                newer[0],
                START - timedelta(days=2),
            )
            result = await run_sync(client, sync_settings)
        assert result.progress.rows_synced == 2
        stored = {
            r.id: r.data for r in await services.providers["sqlite"].get_records(DATASET, [
                "late-insert", newer[0]
            ])
        }  # fmt: skip
        assert stored["late-insert"]["name"] == "stamped early"
        assert stored[newer[0]]["name"] == "moved back"
        await assert_targets_equal_source(sync_settings, source)
    finally:
        await services.close()


async def test_a_hard_delete_leaves_no_copy_and_the_slot_is_confirmed_past_it(
    client: Client, sync_settings: Settings, source: Source
) -> None:
    ids = await source.insert(20)
    services = Services.from_settings(sync_settings, client)
    try:
        async with build_worker(client, services):
            await run_sync(client, sync_settings)
            await source.delete(ids[0], ids[5])
            await source.update(ids[6], name="kept")
            _, written = await slot(source.url)
            result = await run_sync(client, sync_settings)
        assert result.progress.rows_deleted == 2
        assert result.progress.rows_synced == 1
        confirmed, _ = await slot(source.url)
        assert confirmed >= written
        sqlite = services.providers["sqlite"]
        assert {r.id for r in await sqlite.get_records(DATASET, ids)} == set(ids) - {
            ids[0],
            ids[5],
        }
        await assert_targets_equal_source(sync_settings, source)
    finally:
        await services.close()


async def test_deletes_reach_every_real_target(
    client: Client,
    make_settings: Callable[..., Settings],
    provider_servers: dict[str, Any],
    source_url: str,
    source: Source,
) -> None:
    settings = make_settings(
        **{**provider_servers, "postgres_url": source_url}, sync_datasets=[ITEMS_DATASET]
    )
    ids = await source.insert(12)
    services = Services.from_settings(settings, client)
    try:
        async with build_worker(client, services):
            await run_sync(client, settings)
            await source.delete(*ids[:4])
            await run_sync(client, settings)
        for name in ("mongodb", "cosmosdb", "supabase", "sqlite"):
            held = {r.id for r in await services.providers[name].get_records(DATASET, ids)}
            assert held == set(ids[4:]), name
        await assert_targets_equal_source(settings, source)
    finally:
        await services.close()


async def test_concurrent_writers_while_syncing_end_with_targets_equal_to_the_source(
    client: Client, sync_settings: Settings, source: Source
) -> None:
    """Inserts, updates and deletes from several connections during the first copy of the
    table and during the runs that stream the log; afterwards, row by row, equal."""
    ids = await source.insert(300)
    rng = random.Random(7)
    stop = asyncio.Event()

    async def writer(number: int) -> None:
        connection = await asyncpg.connect(source.url)
        try:
            serial = 0
            while not stop.is_set():
                serial += 1
                action = rng.choice(["insert", "update", "update", "delete"])
                if action == "insert":
                    await connection.execute(
                        "INSERT INTO items (id, name, price, updated_at) VALUES ($1, 'new', 2, $2)",
                        f"w{number}-{serial}",
                        source.tick(),
                    )
                elif action == "update":
                    await connection.execute(
                        "UPDATE items SET name = $2, updated_at = $3 WHERE id = $1",
                        rng.choice(ids),
                        f"by writer {number} #{serial}",
                        source.tick(),
                    )
                else:
                    victim = rng.choice(ids)
                    await connection.execute("DELETE FROM items WHERE id = $1", victim)
                    source.deleted.add(victim)
                await asyncio.sleep(0.02)
        finally:
            await connection.close()

    settings = sync_settings.model_copy(update={"sync_batch_size": 500})
    services = Services.from_settings(settings, client)
    try:
        async with build_worker(client, services):
            writers = [asyncio.create_task(writer(n)) for n in range(3)]
            # The first run copies the table while it is written; the second streams the log
            # while it is written.
            for _ in range(2):
                await run_sync(client, settings)
            stop.set()
            await asyncio.gather(*writers)
            final = await run_sync(client, settings)
        assert final.status.value == "completed"
        assert source.deleted
        await assert_targets_equal_source(settings, source)
    finally:
        await services.close()


async def test_a_worker_killed_between_a_target_write_and_the_slot_confirmation(
    cli: list[str],
    cli_env: dict[str, str],
    client: Client,
    sync_settings: Settings,
    source: Source,
    source_url: str,
) -> None:
    """Killed once the target holds rows of a batch the slot has not confirmed: the rescuer
    rewrites that batch; no gap, no duplicate, and the slot ends confirmed past every change."""
    env = sync_worker_env(cli_env, sync_settings, batch_size=50)
    services = Services.from_settings(sync_settings, client)
    async with build_worker(client, services):
        await run_sync(client, sync_settings)  # creates the slot: what follows is streamed
    await services.close()
    # 20 transactions of 50 rows, one batch each; where each one's commit ends in the log.
    commits = []
    for number in range(20):
        await source.insert(50, prefix=f"t{number:02d}")
        commits.append((await slot(source_url))[1])
    _, written = await slot(source_url)

    def synced_rows() -> int:
        if not sync_settings.sqlite_file.exists():
            return 0  # the target is created by its first write
        with sqlite3.connect(sync_settings.sqlite_file) as db:
            try:
                (count,) = db.execute(
                    "SELECT count(*) FROM nexpo_records WHERE dataset = ?", (DATASET,)
                ).fetchone()
            except sqlite3.OperationalError:
                return 0  # the worker is creating the schema
        return int(count)

    handle = await client.start_workflow(
        DataSyncWorkflow.run,
        SyncInput(dataset=DATASET),
        id=sync_workflow_id(DATASET),
        task_queue=sync_settings.temporal_task_queue,
    )

    def confirmed_rows(confirmed: int) -> int:
        return 50 * sum(end <= confirmed for end in commits)

    async def written_not_confirmed() -> int | None:
        confirmed, _ = await slot(source_url)
        return confirmed if synced_rows() > confirmed_rows(confirmed) else None

    try:
        # The kill lands after the look: a worker may confirm the batch in between. Then the
        # next worker takes the run on, and is killed in a later batch (20 are there to take).
        for attempt in range(5):
            async with worker_process(
                cli, env, TEMPORAL_WORKER_IDENTITY=f"doomed-{attempt}"
            ) as doomed:
                await eventually(written_not_confirmed, 60)
                doomed.send_signal(signal.SIGKILL)
                await doomed.wait()
            if await written_not_confirmed() is not None:
                break
        confirmed, _ = await slot(source_url)
        assert synced_rows() > confirmed_rows(confirmed)  # killed between the write and the confirm
        async with worker_process(cli, env, TEMPORAL_WORKER_IDENTITY="rescuer"):
            result: SyncResult = await asyncio.wait_for(handle.result(), 120)
    finally:
        with contextlib.suppress(RPCError):  # done already: nothing to stop
            await handle.terminate("test over")
    assert result.progress.rows_synced == 1000
    await assert_targets_equal_source(sync_settings, source)
    with sqlite3.connect(sync_settings.sqlite_file) as db:
        count, distinct = db.execute(
            "SELECT count(*), count(DISTINCT id) FROM nexpo_records WHERE dataset = ?",
            (DATASET,),
        ).fetchone()
    assert count == distinct == 1000
    confirmed, _ = await slot(source_url)
    assert confirmed >= written


async def test_a_server_without_logical_decoding_is_refused_naming_the_setting(
    client: Client, make_settings: Callable[..., Settings]
) -> None:
    """The machine's server runs at wal_level=replica."""
    async with fresh_database() as url:
        await Source(url).create_table()
        settings = make_settings(
            enable_postgres=True,
            postgres_url=url,
            enable_sqlite=True,
            sync_datasets=[ITEMS_DATASET],
        )
        async with saga_worker(client, settings):
            with pytest.raises(WorkflowFailureError) as failure:
                await run_sync(client, settings)
    message = str(failure.value.cause)
    assert "wal_level=logical" in message
    assert '"poll"' in message


async def test_a_table_without_a_primary_key_is_refused(
    client: Client, sync_settings: Settings, source: Source
) -> None:
    await source.execute("ALTER TABLE items DROP CONSTRAINT items_pkey")
    async with saga_worker(client, sync_settings):
        with pytest.raises(WorkflowFailureError) as failure:
            await run_sync(client, sync_settings)
    assert "no primary key or replica identity" in str(failure.value.cause)


async def test_polling_stays_available_where_chosen(
    client: Client, make_settings: Callable[..., Settings], source: Source, source_url: str
) -> None:
    polled = {**ITEMS_DATASET, "source": {**ITEMS_DATASET["source"], "capture": "poll"}}
    settings = make_settings(
        enable_postgres=True, postgres_url=source_url, enable_sqlite=True, sync_datasets=[polled]
    )
    await source.insert(10)
    services = Services.from_settings(settings, client)
    try:
        async with build_worker(client, services):
            assert (await run_sync(client, settings)).progress.rows_synced == 10
    finally:
        await services.close()
    connection = await asyncpg.connect(source_url)
    try:
        slots = "SELECT count(*) FROM pg_replication_slots WHERE database = current_database()"
        assert await connection.fetchval(slots) == 0
    finally:
        await connection.close()


async def test_a_sqlite_source_is_captured_by_its_change_table(
    client: Client, make_settings: Callable[..., Settings], tmp_path: Path, postgres_url: str
) -> None:
    """The embedded default as the source: triggers feed a change table, PostgreSQL is the
    target; inserts, updates and hard deletes arrive, in order."""
    dataset = {
        "name": "notes",
        "source": {"provider": "sqlite", "table": "notes", "deleted_column": None},
    }
    settings = make_settings(
        enable_postgres=True, postgres_url=postgres_url, enable_sqlite=True,
        sqlite_path=tmp_path / "source.db", sync_datasets=[dataset],
    )  # fmt: skip

    def write(*statements: str) -> None:
        with sqlite3.connect(tmp_path / "source.db") as db:
            for statement in statements:
                db.execute(statement)

    write(
        "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL)",
        *(f"INSERT INTO notes (body) VALUES ('note {n}')" for n in range(25)),
    )
    services = Services.from_settings(settings, client)
    postgres = services.providers["postgres"]
    try:
        async with build_worker(client, services):
            first = await client.execute_workflow(
                DataSyncWorkflow.run, SyncInput(dataset="notes"), id=sync_workflow_id("notes"),
                task_queue=settings.temporal_task_queue,
            )  # fmt: skip
            assert first.progress.rows_synced == 25
            write(
                "UPDATE notes SET body = 'edited' WHERE id = 3",
                "DELETE FROM notes WHERE id IN (4, 5)",
                "INSERT INTO notes (id, body) VALUES (100, 'new')",
                "DELETE FROM notes WHERE id = 100",
                "INSERT INTO notes (id, body) VALUES (100, 'back again')",
            )
            second = await client.execute_workflow(
                DataSyncWorkflow.run, SyncInput(dataset="notes"), id=sync_workflow_id("notes"),
                task_queue=settings.temporal_task_queue,
            )  # fmt: skip
        assert second.progress.rows_deleted == 2
        held = {
            r.id: r.data["body"]
            for r in await postgres.get_records("notes", [str(n) for n in range(1, 101)])
        }
        assert held["3"] == "edited"
        assert held["100"] == "back again"
        assert not {"4", "5"} & set(held)
        assert len(held) == 24
        with sqlite3.connect(tmp_path / "source.db") as db:
            (pending,) = db.execute("SELECT count(*) FROM nexpo_changes").fetchone()
        assert pending == 0  # confirmed changes leave the change table

        # A reset removes the triggers and the copy state; the next run copies the table anew.
        assert (await reset_capture(client, services, "notes")).dropped
        with sqlite3.connect(tmp_path / "source.db") as db:
            triggers = db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'trigger' AND name LIKE 'nexpo_sync_%'"
            ).fetchall()
        assert triggers == []
        assert await services.providers["sqlite"].get_records(WATERMARKS_DATASET, ["notes"]) == []
        async with build_worker(client, services):
            third = await client.execute_workflow(
                DataSyncWorkflow.run, SyncInput(dataset="notes"), id=sync_workflow_id("notes"),
                task_queue=settings.temporal_task_queue,
            )  # fmt: skip
        assert third.progress.rows_synced == 24
    finally:
        await services.close()


async def test_offboarding_a_synced_user_leaves_no_trace_in_any_target(
    client: Client, saga_settings: Settings
) -> None:
    """The users dataset carries no password hash; offboarding erases the user's copies from
    every sync target at once (shown in its result), and the next sync finds nothing to
    bring back. Every target is read directly, by id and by email."""
    users = [onboarding(), onboarding()]
    leaving = users[0]
    async with saga_worker(client, saga_settings) as providers:
        for user in users:
            await run_saga(client, saga_settings, user)
        first = await run_sync(client, saga_settings, dataset=USERS_DATASET)
        assert first.progress.rows_synced >= 2
        targets = [name for name in providers if name != "postgres"]
        ids = [str(user.user_id) for user in users]
        for name in targets:
            copies = {r.id: r.data for r in await providers[name].get_records("users", ids)}
            assert set(copies) == set(ids), name
            assert "password_hash" not in copies[ids[0]], name
            assert copies[ids[0]]["email"] == leaving.email
        result = await client.execute_workflow(
            UserOffboardingWorkflow.run,
            OffboardingInput(user_id=ids[0]),
            id=f"user-offboarding-{uuid.uuid4()}",
            task_queue=saga_settings.temporal_task_queue,
        )
        erased = {copy.provider for copy in result.erased_copies if copy.removed}
        assert erased == set(targets)
        second = await run_sync(client, saga_settings, dataset=USERS_DATASET)
        assert second.progress.rows_deleted == 1
    readers = enabled_providers(saga_settings)
    try:
        for name, provider in readers.items():
            assert await provider.get_user(ids[0]) is None, name
            kept = {r.id for r in await provider.get_records("users", ids)}
            assert ids[0] not in kept, name
            quarantined = await provider.get_records(QUARANTINE_PREFIX + "users", ids)
            assert not quarantined, name
    finally:
        for provider in readers.values():
            await provider.close()
    assert leaving.email not in await dump_of_every_database(saga_settings)


async def dump_of_every_database(settings: Settings) -> str:
    """Everything PostgreSQL, SQLite and MongoDB hold, as text, read by full scans (Cosmos DB
    and Supabase are read by id in the test)."""
    texts = []
    connection = await asyncpg.connect(settings.postgres_url.get_secret_value())
    try:
        for table in ("nexpo_users", "nexpo_records"):
            texts += [str(dict(row)) for row in await connection.fetch(f"SELECT * FROM {table}")]
    finally:
        await connection.close()
    with sqlite3.connect(settings.sqlite_file) as db:
        for table in ("nexpo_users", "nexpo_records"):
            texts += [str(row) for row in db.execute(f"SELECT * FROM {table}")]
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        settings.mongodb_url.get_secret_value()
    )
    try:
        database = mongo[settings.mongodb_database]
        for collection in await database.list_collection_names():
            texts += [str(doc) async for doc in database[collection].find({})]
    finally:
        await mongo.close()
    return "\n".join(texts)


async def test_a_dataset_carries_only_its_columns_and_masks_some(
    client: Client, make_settings: Callable[..., Settings], source: Source, source_url: str
) -> None:
    narrow = {
        "name": DATASET,
        "source": {"provider": "postgres", "table": "items"},
        "columns": ["id", "name"],
        "masked": ["name"],
    }
    settings = make_settings(
        enable_postgres=True, postgres_url=source_url, enable_sqlite=True, sync_datasets=[narrow]
    )
    ids = await source.insert(3)
    services = Services.from_settings(settings, client)
    try:
        async with build_worker(client, services):
            await run_sync(client, settings)
        held = await services.providers["sqlite"].get_records(DATASET, ids)
    finally:
        await services.close()
    digest = hashlib.sha256(json.dumps(f"name of {ids[0]}").encode()).hexdigest()
    first = next(record for record in held if record.id == ids[0])
    assert first.data == {"id": ids[0], "name": f"sha256:{digest}"}
    assert all(set(record.data) == {"id", "name"} for record in held)


@pytest.mark.skipif("MSSQL_URL" not in os.environ, reason="no SQL Server here; set MSSQL_URL")
async def test_sql_server_change_tracking_reads_confirms_and_deletes() -> None:
    """Change Tracking on a real SQL Server: the database needs change tracking and snapshot
    isolation on."""
    provider = SQLServerProvider.from_settings(
        Settings(_env_file=None, enable_sqlserver=True, sqlserver_url=os.environ["MSSQL_URL"])
    )
    table = f"ct_{uuid.uuid4().hex[:8]}"
    engine = await provider.ready_engine()
    async with engine.begin() as connection:
        await connection.execute(text(f"CREATE TABLE {table} (id INT PRIMARY KEY, body TEXT)"))
    log = change_log(provider, SyncSource(table=table, deleted_column=None), table)
    try:
        start = await log.ensure()
        assert start is not None
        assert await log.ensure() is None
        async with engine.begin() as connection:
            await connection.execute(text(f"INSERT INTO {table} VALUES (1, 'a'), (2, 'b')"))
            await connection.execute(text(f"DELETE FROM {table} WHERE id = 2"))
        segment = await log.read(limit=100)
        assert {key: removed for key, (_, removed) in segment.changes.items()} == {
            "1": False,
            "2": True,
        }
        assert segment.end is not None
        await log.confirm(segment.end)
        assert (await log.read()).changes == {}
    finally:
        await log.drop()
        async with engine.begin() as connection:
            await connection.execute(text(f"DROP TABLE {table}"))
        await provider.close()


async def test_the_lag_gauge_follows_the_slot_on_the_workers_metrics_endpoint(
    cli: list[str],
    cli_env: dict[str, str],
    client: Client,
    sync_settings: Settings,
    source: Source,
) -> None:
    """While a run works through changes committed a second ago, sync_lag_seconds shows their
    age; once the run has caught up, 0."""
    metrics_address = f"127.0.0.1:{free_port()}"
    gauge = re.compile(r'^sync_lag_seconds\{[^}]*dataset="items"[^}]*\} (\S+)$', re.MULTILINE)

    async def lag_seconds(http: httpx.AsyncClient) -> float | None:
        found = gauge.search((await http.get(f"http://{metrics_address}/metrics")).text)
        return float(found.group(1)) if found else None

    env = sync_worker_env(cli_env, sync_settings, batch_size=10)
    async with (
        worker_process(
            cli, env, METRICS_BIND_ADDRESS=metrics_address, TEMPORAL_WORKER_IDENTITY="lagging"
        ),
        httpx.AsyncClient() as http,
    ):
        await wait_for_pollers(client, sync_settings.temporal_task_queue, {"lagging"})
        await run_sync(client, sync_settings)  # creates the slot: what follows is streamed
        assert await lag_seconds(http) == 0.0
        await source.insert(200)
        await asyncio.sleep(1.0)
        handle = await client.start_workflow(
            DataSyncWorkflow.run,
            SyncInput(dataset=DATASET),
            id=sync_workflow_id(DATASET),
            task_queue=sync_settings.temporal_task_queue,
        )
        seen: list[float] = []
        outcome = asyncio.ensure_future(handle.result())
        while not outcome.done():
            if (value := await lag_seconds(http)) is not None:
                seen.append(value)
            await asyncio.sleep(0.05)
        assert (await outcome).progress.rows_synced == 200
        assert max(seen) >= 1.0, seen
        assert await lag_seconds(http) == 0.0
