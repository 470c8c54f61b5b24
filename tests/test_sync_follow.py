"""Follow mode: one long-running DataSyncWorkflow tails the source's change log and applies
micro-batches until stopped. Real servers: a Temporal dev server, PostgreSQL at
wal_level=logical as the source (the table of tests/test_sync.py), SQLite as the target, and
MongoDB, Cosmos DB and Supabase too where said."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import signal
import sqlite3
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import pytest
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowHandle,
    WorkflowQueryFailedError,
)
from temporalio.service import RPCError

from nexpo_workflows.config import Settings
from nexpo_workflows.services import Services
from nexpo_workflows.sync.datasets import QUARANTINE_PREFIX, WATERMARKS_DATASET
from nexpo_workflows.sync.models import (
    DatasetConfig,
    PositionKind,
    SyncInput,
    SyncResult,
    SyncStatus,
)
from nexpo_workflows.sync.runs import start_sync, stop_sync
from nexpo_workflows.sync.schedules import SyncSchedules, parse_interval, sync_schedule_id
from nexpo_workflows.sync.workflow import DataSyncWorkflow, sync_workflow_id
from nexpo_workflows.worker import build_worker
from tests.conftest import run_cli
from tests.sync_source import (
    DATASET,
    ITEMS_DATASET,
    Source,
    assert_targets_equal_source,
    eventually,
    progress_of,
    sync_env,
    sync_worker_env,
)
from tests.test_in_process import in_process_gateway
from tests.test_sync_api import gateway_on, stop_leftovers
from tests.test_sync_capture import slot
from tests.test_worker_processes import worker_process

# Seconds a caught-up follow run waits before it looks again, in these tests.
POLL = 0.2
# Under load on two shared cores a change takes a few seconds to reach every target.
CATCH_UP_SECONDS = 60.0


@pytest.fixture
def follow_settings(sync_settings: Settings) -> Settings:
    # Batches of 40, 3 per run (empty looks included): a follow run continues as new often.
    return sync_settings.model_copy(update={"sync_follow_poll_seconds": POLL})


@contextlib.asynccontextmanager
async def following(
    client: Client, settings: Settings
) -> AsyncIterator[tuple[Services, WorkflowHandle[DataSyncWorkflow, SyncResult]]]:
    """A worker, and a follow run of the dataset started as the gateway and the CLI do; the
    run is terminated if the test leaves it running."""
    services = Services.from_settings(settings, client)
    try:
        async with build_worker(client, services):
            await start_sync(client, services, SyncInput(dataset=DATASET, follow=True))
            # No run id: queries and the result follow the run through continue-as-new.
            handle = client.get_workflow_handle_for(DataSyncWorkflow.run, sync_workflow_id(DATASET))
            try:
                yield services, handle
            finally:
                await stop_leftovers(client, settings)
    finally:
        await services.close()


async def caught_up(
    client: Client, settings: Settings, source: Source, seconds: float = CATCH_UP_SECONDS
) -> None:
    """Wait until every target holds exactly what the source holds; past ``seconds``, fail
    saying how the run is doing and what differs."""
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        try:
            await assert_targets_equal_source(settings, source)
        except AssertionError as error:
            if asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.1)
                continue
            handle = client.get_workflow_handle(sync_workflow_id(DATASET))
            described = await handle.describe()
            try:
                progress: Any = await handle.query(DataSyncWorkflow.progress)
            except (WorkflowQueryFailedError, RPCError) as failed:
                progress = failed
            raise AssertionError(
                f"not caught up within {seconds} s: run {described.status}, {progress}"
            ) from error
        return


async def still_running(client: Client) -> bool:
    """The dataset's run chain goes on (its latest run is running)."""
    described = await client.get_workflow_handle(sync_workflow_id(DATASET)).describe()
    return described.status is WorkflowExecutionStatus.RUNNING


async def stream_inserts(source: Source, stop: asyncio.Event) -> int:
    """Five new rows per transaction every 20 ms until ``stop``; how many it inserted."""
    connection = await asyncpg.connect(source.url)
    serial = 0
    try:
        while not stop.is_set():
            await connection.executemany(
                "INSERT INTO items (id, name, price, updated_at) VALUES ($1, 'new', 2, $2)",
                [(f"stream-{serial}-{n}", source.tick()) for n in range(5)],
            )
            serial += 1
            await asyncio.sleep(0.02)
    finally:
        await connection.close()
    return serial * 5


async def test_changes_made_while_following_reach_the_target_verified_without_a_new_run(
    client: Client, follow_settings: Settings, source: Source
) -> None:
    ids = await source.insert(30)
    async with following(client, follow_settings) as (services, handle):
        first_run = (await handle.describe()).run_id
        await caught_up(client, follow_settings, source)
        # Written, then verified: the progress counts a batch once it is verified.
        await eventually(lambda: progress_of(handle, lambda p: p.rows_synced == 30))
        assert (await handle.query(DataSyncWorkflow.progress)).following

        # Inserts, updates, deletes (hard and soft), an invalid row: each reaches the target
        # through the same validation, write and verification as a one-shot run.
        await source.insert(5, prefix="later")
        await source.update(ids[1], name="renamed while following")
        await source.update(ids[2], deleted=True)
        await source.delete(ids[3], ids[4])
        bad = await source.insert(1, price="-1", prefix="bad")
        await eventually(
            lambda: progress_of(handle, lambda p: p.rows_quarantined == 1), CATCH_UP_SECONDS
        )
        quarantine = QUARANTINE_PREFIX + DATASET
        postgres = services.providers["postgres"]
        assert [record.id for record in await postgres.get_records(quarantine, bad)] == bad
        # Erased from the source, the invalid row leaves the quarantine.
        await source.delete(*bad)
        await caught_up(client, follow_settings, source)
        await eventually(lambda: progress_of(handle, lambda p: p.rows_deleted == 3))
        assert await postgres.get_records(quarantine, bad) == []
        assert await still_running(client)

        # Idle, it kept looking (and continued as new: 3 looks per run here), with no lag.
        async def idle_and_continued() -> bool | None:
            progress = await handle.query(DataSyncWorkflow.progress)
            return (progress.runs >= 3 and progress.lag_seconds == 0.0) or None

        await eventually(idle_and_continued, CATCH_UP_SECONDS)
        assert (await handle.describe()).run_id != first_run

        result = await stop_sync(client, services, DATASET)
        outcome = await result.result()
    assert outcome.status is SyncStatus.STOPPED
    # The copy's 30 rows, 5 inserts, an update and a soft delete (a tombstone).
    assert outcome.progress.rows_synced == 30 + 5 + 2
    assert (outcome.progress.rows_deleted, outcome.progress.rows_quarantined) == (3, 1)


async def test_a_steady_writer_across_continue_as_new_loses_nothing_on_every_target(
    client: Client,
    make_settings: Callable[..., Settings],
    provider_servers: dict[str, Any],
    source_url: str,
    source: Source,
) -> None:
    """Inserts, updates and deletes from two connections while a follow run continues as new
    again and again (batches of 25, 3 looks per run): SQLite, MongoDB, Cosmos DB and Supabase
    end equal to the source, row by row."""
    settings = make_settings(
        **{**provider_servers, "postgres_url": source_url},
        sync_batch_size=25,
        sync_batches_per_run=3,
        sync_step_deadline_seconds=60,
        sync_follow_poll_seconds=POLL,
        sync_datasets=[ITEMS_DATASET],
    )
    ids = await source.insert(40)
    rng = random.Random(15)
    stop = asyncio.Event()

    async def writer(number: int) -> int:
        connection = await asyncpg.connect(source.url)
        serial = 0
        try:
            while not stop.is_set():
                serial += 1
                action = rng.choice(["insert", "insert", "update", "delete"])
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
                    gone = rng.choice(ids)
                    await connection.execute("DELETE FROM items WHERE id = $1", gone)
                    source.deleted.add(gone)
                await asyncio.sleep(0.01)
        finally:
            await connection.close()
        return serial

    async with following(client, settings) as (services, handle):
        first_run = (await handle.describe()).run_id
        writers = [asyncio.ensure_future(writer(n)) for n in range(2)]
        await asyncio.sleep(5)
        stop.set()
        written = sum(await asyncio.gather(*writers))
        assert written > 50
        # Four targets, one of them the Cosmos DB emulator, on two shared cores.
        await caught_up(client, settings, source, 2 * CATCH_UP_SECONDS)
        assert await still_running(client)
        assert (await handle.describe()).run_id != first_run
        outcome = await (await stop_sync(client, services, DATASET)).result()
    assert outcome.status is SyncStatus.STOPPED
    assert outcome.progress.runs > 2
    await assert_targets_equal_source(settings, source)


async def test_stop_ends_after_the_current_batch_with_nothing_half_applied(
    client: Client, follow_settings: Settings, source: Source
) -> None:
    """Stopped while rows stream in: the run ends `stopped`, the log is confirmed exactly up
    to its last verified batch, the target holds exactly the rows it counts as synced, and the
    next run takes the rest, none twice."""
    await source.insert(20)
    stop = asyncio.Event()

    async with following(client, follow_settings) as (services, handle):
        # The copy of the table first: a row inserted while it runs may be both copied and
        # streamed, and counted twice (written twice, idempotently).
        await eventually(lambda: progress_of(handle, lambda p: p.rows_synced == 20))
        streaming = asyncio.ensure_future(stream_inserts(source, stop))
        await eventually(lambda: progress_of(handle, lambda p: p.rows_synced > 60))
        outcome = await (await stop_sync(client, services, DATASET)).result()
        stop.set()
        streamed = await streaming
        assert not await still_running(client)
    assert outcome.status is SyncStatus.STOPPED
    assert outcome.progress.phase == "done"
    watermark = outcome.progress.watermark
    assert watermark is not None
    assert watermark.kind is PositionKind.LOG
    confirmed, _ = await slot(source.url)
    assert confirmed == watermark.version
    with sqlite3.connect(follow_settings.sqlite_file) as db:
        (held,) = db.execute(
            "SELECT count(*) FROM nexpo_records WHERE dataset = ?", (DATASET,)
        ).fetchone()
    assert held == outcome.progress.rows_synced
    assert held < 20 + streamed

    services = Services.from_settings(follow_settings, client)
    try:
        async with build_worker(client, services):
            rest = await client.execute_workflow(
                DataSyncWorkflow.run,
                SyncInput(dataset=DATASET),
                id=sync_workflow_id(DATASET),
                task_queue=follow_settings.temporal_task_queue,
            )
    finally:
        await services.close()
    assert rest.progress.rows_synced == 20 + streamed - held
    await assert_targets_equal_source(follow_settings, source)


def interruptible() -> None:
    """In the command's process before it starts: SIGINT at its default, as a shell starts a
    command in the foreground. Tests started in the background by a shell without job control
    (`cmd &` in a script) ignore SIGINT, and a child inherits that: the command would then never
    see the interrupt the test sends."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


async def test_a_start_while_following_is_refused_and_scheduled_starts_are_skipped(
    client: Client,
    cli: list[str],
    cli_env: dict[str, str],
    follow_settings: Settings,
    source_url: str,
    source: Source,
) -> None:
    """Started by the CLI, refused a second start (CLI exit 1, gateway 409), a scheduled
    start ends `skipped`, the status shows it following with its lag, and `sync stop` ends it
    with its result; stopping again finds nothing to stop."""
    env = sync_env(cli_env, follow_settings, source_url)
    await source.insert(10)
    services = Services.from_settings(follow_settings, client)
    try:
        async with (
            build_worker(client, services),
            gateway_on(client, follow_settings) as http,
        ):
            # The command shows the progress, with the lag, until interrupted: the run goes on.
            shown = await asyncio.create_subprocess_exec(
                *cli, "sync", "run", DATASET, "--follow", env=env,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                preexec_fn=interruptible,
            )  # fmt: skip
            assert shown.stdout is not None
            caught = b"waiting: 10 rows seen, 10 synced"
            while caught not in (line := await shown.stdout.readline()):
                assert line, "the command ended"
            assert b", lag 0.0 s" in line
            shown.send_signal(signal.SIGINT)
            _, stderr = await asyncio.wait_for(shown.communicate(), 30)
            assert shown.returncode == 130
            assert f"`nexpo-workflows sync stop {DATASET}` ends it" in stderr.decode()
            await caught_up(client, follow_settings, source)
            assert await still_running(client)

            again = await run_cli([*cli, "sync", "run", DATASET], env)
            assert again.returncode == 1
            assert "is running" in again.stderr
            refused = await http.post(f"/api/sync/{DATASET}", json={"follow": True})
            assert refused.status_code == 409
            assert refused.json()["detail"]["workflowId"] == sync_workflow_id(DATASET)
            both = await http.post(f"/api/sync/{DATASET}", json={"follow": True, "audit": True})
            assert both.status_code == 422

            await SyncSchedules(client, follow_settings).upsert(DATASET, parse_interval("1d"))
            await client.get_schedule_handle(sync_schedule_id(DATASET)).trigger()

            async def scheduled_start() -> str | None:
                recent = (
                    await SyncSchedules(client, follow_settings).describe(DATASET)
                ).recent_runs
                return recent[-1].workflow_id if recent else None

            skipped = await client.get_workflow_handle(
                await eventually(scheduled_start), result_type=SyncResult
            ).result()
            assert skipped.status is SyncStatus.SKIPPED

            view = (await http.get(f"/api/sync/{DATASET}")).json()
            assert view["status"] == "running"
            assert view["progress"]["following"] is True
            assert view["progress"]["lag_seconds"] is not None

            stopped = await run_cli([*cli, "sync", "stop", DATASET], env)
            assert stopped.returncode == 0, stopped.stderr
            assert stopped.stdout.splitlines()[-1].startswith(
                f"sync {DATASET}: stopped; 10 rows seen, 10 synced"
            )
            status = await run_cli([*cli, "sync", "status", DATASET], env)
            assert json.loads(status.stdout)["result"]["status"] == "stopped"
            nothing = await run_cli([*cli, "sync", "stop", DATASET], env)
            assert nothing.returncode == 1
            assert f"no sync of {DATASET} is running" in nothing.stderr
            assert (await http.post(f"/api/sync/{DATASET}/stop")).status_code == 404
            assert (await http.post("/api/sync/nope/stop")).status_code == 404

            # Through the gateway: started with follow, stopped with POST .../stop.
            accepted = await http.post(f"/api/sync/{DATASET}", json={"follow": True})
            assert accepted.status_code == 202, accepted.text
            await source.insert(3, prefix="api")
            await caught_up(client, follow_settings, source)
            stopping = await http.post(f"/api/sync/{DATASET}/stop")
            assert stopping.status_code == 202, stopping.text
            assert stopping.json()["workflowId"] == sync_workflow_id(DATASET)
            result = await client.get_workflow_handle(
                sync_workflow_id(DATASET), result_type=SyncResult
            ).result()
            assert result.status is SyncStatus.STOPPED
            assert result.progress.rows_synced == 3
    finally:
        await services.close()
        await stop_leftovers(client, follow_settings)


async def test_a_polled_dataset_is_followed_too(
    client: Client, follow_settings: Settings, source: Source
) -> None:
    """A dataset read by polling its version column: the follow run polls with the same idle
    wait, and what it finds (inserts, updates, soft deletes) is verified in the target."""
    polled = {**ITEMS_DATASET, "source": {**ITEMS_DATASET["source"], "capture": "poll"}}
    settings = follow_settings.model_copy(
        update={"sync_datasets": [DatasetConfig.model_validate(polled)]}
    )
    ids = await source.insert(15)
    async with following(client, settings) as (services, handle):
        await caught_up(client, settings, source)
        await source.insert(4, prefix="later")
        await source.update(ids[0], name="renamed while following")
        await source.update(ids[1], deleted=True)
        await caught_up(client, settings, source)
        await eventually(lambda: progress_of(handle, lambda p: p.rows_synced == 15 + 4 + 2))
        outcome = await (await stop_sync(client, services, DATASET)).result()
        # The stop recorded the last verified watermark: the next run starts after it.
        stored = await services.providers["postgres"].get_records(WATERMARKS_DATASET, [DATASET])
    assert outcome.status is SyncStatus.STOPPED
    watermark = outcome.progress.watermark
    assert watermark is not None
    assert watermark.kind is PositionKind.VERSIONS
    assert (stored[0].version, stored[0].data["id"]) == (watermark.version, watermark.id)


async def test_a_worker_killed_while_following_is_replaced_and_nothing_is_lost(
    cli: list[str],
    cli_env: dict[str, str],
    client: Client,
    follow_settings: Settings,
    source: Source,
) -> None:
    """The follow run's worker process is killed (SIGKILL) while rows stream in; another one
    takes the run over: the run goes on, and the target ends equal to the source, each row
    once."""
    env = {
        **sync_worker_env(cli_env, follow_settings, batch_size=40),
        "SYNC_FOLLOW_POLL_SECONDS": str(POLL),
        "SYNC_STEP_DEADLINE_SECONDS": "60",
    }
    await source.insert(20)
    stop = asyncio.Event()

    handle = client.get_workflow_handle_for(DataSyncWorkflow.run, sync_workflow_id(DATASET))
    try:
        async with worker_process(cli, env, TEMPORAL_WORKER_IDENTITY="doomed") as doomed:
            await client.start_workflow(
                DataSyncWorkflow.run,
                SyncInput(dataset=DATASET, follow=True),
                id=sync_workflow_id(DATASET),
                task_queue=follow_settings.temporal_task_queue,
            )
            streaming = asyncio.ensure_future(stream_inserts(source, stop))
            await eventually(lambda: progress_of(handle, lambda p: p.rows_synced > 100), 60)
            doomed.send_signal(signal.SIGKILL)
            await doomed.wait()
        async with worker_process(cli, env, TEMPORAL_WORKER_IDENTITY="rescuer"):
            await asyncio.sleep(1)
            stop.set()
            await streaming
            await caught_up(client, follow_settings, source)
            assert await still_running(client)
            await handle.signal(DataSyncWorkflow.stop)
            outcome = await asyncio.wait_for(handle.result(), 60)
    finally:
        stop.set()
        await stop_leftovers(client, follow_settings)
    assert outcome.status is SyncStatus.STOPPED
    await assert_targets_equal_source(follow_settings, source)
    with sqlite3.connect(follow_settings.sqlite_file) as db:
        count, distinct = db.execute(
            "SELECT count(*), count(DISTINCT id) FROM nexpo_records WHERE dataset = ?",
            (DATASET,),
        ).fetchone()
    assert count == distinct == len(await source.contents())


async def test_without_temporal_a_follow_run_is_refused(
    cli: list[str], cli_env: dict[str, str], follow_settings: Settings, source: Source
) -> None:
    """ENABLE_TEMPORAL=false runs a one-shot sync in the gateway or the command; a follow run
    goes on until stopped, which only a durable run can: 409 / exit 2, nothing synced."""
    local = follow_settings.model_copy(update={"enable_temporal": False})
    await source.insert(3)
    async with in_process_gateway(local) as http:
        refused = await http.post(f"/api/sync/{DATASET}", json={"follow": True})
    assert refused.status_code == 409, refused.text
    assert "needs ENABLE_TEMPORAL=true" in refused.text
    env = {**sync_worker_env(cli_env, local, batch_size=40), "ENABLE_TEMPORAL": "false"}
    ran = await run_cli([*cli, "sync", "run", DATASET, "--follow"], env)
    assert ran.returncode == 2
    assert "needs ENABLE_TEMPORAL=true" in ran.stderr
    # Nothing ran: the target was never even opened.
    assert not local.sqlite_file.exists()
