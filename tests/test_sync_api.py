"""/api/sync and `nexpo-workflows sync ...` on a real Temporal server: PostgreSQL as the
source (the table of tests/test_sync.py; the logical cluster, or the machine's server at
wal_level=replica for the refusals), SQLite as the target."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any

import asyncpg
import httpx
import pytest
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from nexpo_workflows.api.app import create_app
from nexpo_workflows.api.deps import GatewayState
from nexpo_workflows.config import Settings
from nexpo_workflows.providers import enabled_providers
from nexpo_workflows.services import Services
from nexpo_workflows.sync.capture.postgres import slot_name
from nexpo_workflows.sync.datasets import WATERMARKS_DATASET
from nexpo_workflows.sync.models import SyncInput, SyncResult, SyncStatus
from nexpo_workflows.sync.schedules import (
    ScheduleNotFoundError,
    SyncSchedules,
    format_interval,
    parse_interval,
    sync_schedule_id,
)
from nexpo_workflows.sync.workflow import DataSyncWorkflow, sync_workflow_id
from nexpo_workflows.worker import build_worker
from tests.conftest import API_KEY, run_cli
from tests.servers.postgres import fresh_database, private_cluster
from tests.sync_source import (
    DATASET,
    ITEMS_DATASET,
    Source,
    assert_targets_equal_source,
    eventually,
    sync_env,
)


async def stop_leftovers(client: Client, settings: Settings) -> None:
    """The schedule and the run of the dataset are server-wide: none may outlive its test."""
    with suppress(ScheduleNotFoundError):
        await SyncSchedules(client, settings).delete(DATASET)
    with suppress(RPCError):  # raised when it is not running
        await client.get_workflow_handle(sync_workflow_id(DATASET)).terminate("test over")


@asynccontextmanager
async def gateway_on(client: Client | None, settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    services = Services.from_settings(settings, client)
    app = create_app(GatewayState(services, client, metrics_url=None))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://gw", headers={"X-API-Key": API_KEY}
    ) as http:
        yield http
    await services.close()


@pytest.fixture
async def gateway(client: Client, sync_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with gateway_on(client, sync_settings) as http:
        yield http
    await stop_leftovers(client, sync_settings)


@pytest.fixture
async def sync_worker(client: Client, sync_settings: Settings) -> AsyncIterator[Services]:
    services = Services.from_settings(sync_settings, client)
    async with build_worker(client, services):
        yield services
    await services.close()


async def start_stuck_run(client: Client) -> None:
    """A run of the dataset that stays running: nothing polls its task queue."""
    await client.start_workflow(
        DataSyncWorkflow.run,
        SyncInput(dataset=DATASET),
        id=sync_workflow_id(DATASET),
        task_queue=f"nobody-polls-{uuid.uuid4()}",
    )


async def synced_ids(settings: Settings, ids: list[str]) -> set[str]:
    sqlite = enabled_providers(settings)["sqlite"]
    try:
        return {record.id for record in await sqlite.get_records(DATASET, ids)}
    finally:
        await sqlite.close()


def test_intervals_are_parsed_and_spelled_back() -> None:
    assert parse_interval("30s").total_seconds() == 30
    assert parse_interval(" 1H30m ").total_seconds() == 5400
    assert format_interval(parse_interval("90m")) == "1h30m"
    assert format_interval(parse_interval("1d")) == "1d"
    for bad in ("", "5", "m", "5 minutes", "-5m", "1.5h", "9s"):
        with pytest.raises(ValueError, match="interval"):
            parse_interval(bad)


async def test_post_starts_a_sync_and_get_shows_its_progress(
    gateway: httpx.AsyncClient,
    client: Client,
    sync_settings: Settings,
    source: Source,
    sync_worker: Services,
) -> None:
    await source.insert(50)
    response = await gateway.post(f"/api/sync/{DATASET}")
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert accepted["workflowId"] == sync_workflow_id(DATASET)
    assert accepted["statusUrl"].endswith(f"/api/workflows/{sync_workflow_id(DATASET)}")
    result = await client.get_workflow_handle(
        accepted["workflowId"], result_type=SyncResult
    ).result()
    assert result.status is SyncStatus.COMPLETED
    await assert_targets_equal_source(sync_settings, source)

    status = await gateway.get(f"/api/sync/{DATASET}")
    assert status.status_code == 200, status.text
    view = status.json()
    assert view["status"] == "completed"
    assert view["progress"]["rows_synced"] == 50
    assert view["result"]["status"] == "completed"

    audit = await gateway.post(f"/api/sync/{DATASET}", json={"audit": True})
    assert audit.status_code == 202
    audited = await client.get_workflow_handle(
        sync_workflow_id(DATASET), result_type=SyncResult
    ).result()
    assert (audited.progress.rows_seen, audited.progress.rows_repaired) == (50, 0)


async def test_unknown_datasets_and_runs_are_404(
    client: Client, sync_settings: Settings, gateway: httpx.AsyncClient
) -> None:
    started = await gateway.post("/api/sync/nope", json={"full": True})
    assert started.status_code == 404
    assert "no dataset 'nope'" in started.json()["detail"]
    assert (await gateway.get("/api/sync/nope")).status_code == 404
    scheduled = await gateway.put("/api/sync/nope/schedule", json={"every": "5m"})
    assert scheduled.status_code == 404
    unknown_option = await gateway.post(f"/api/sync/{DATASET}", json={"fast": True})
    assert unknown_option.status_code == 422

    # Run ids outlive a test on the session's server: a dataset of its own never ran.
    fresh = f"never_{uuid.uuid4().hex[:8]}"
    items = sync_settings.sync_datasets[0]
    settings = sync_settings.model_copy(
        update={"sync_datasets": [items, items.model_copy(update={"name": fresh})]}
    )
    async with gateway_on(client, settings) as http:
        never_ran = await http.get(f"/api/sync/{fresh}")
    assert never_ran.status_code == 404
    assert "has run" in never_ran.json()["detail"]


async def test_a_dataset_these_providers_cannot_run_is_refused_before_it_starts(
    client: Client, sync_settings: Settings, cli: list[str], cli_env: dict[str, str]
) -> None:
    # The built-in users dataset reads PostgreSQL, which only SQLite settings do not enable.
    sqlite_only = sync_settings.model_copy(update={"enable_postgres": False})
    async with gateway_on(client, sqlite_only) as http:
        refused = await http.post("/api/sync/users")
    assert refused.status_code == 409
    assert "needs postgres, not enabled here" in refused.json()["detail"]["message"]
    ran = await run_cli([*cli, "sync", "run", "users"], cli_env)
    assert ran.returncode == 2
    assert "needs postgres, not enabled here" in ran.stderr


async def test_without_temporal_status_and_schedules_answer_503(sync_settings: Settings) -> None:
    # A one-shot run does run without Temporal: tests/test_in_process.py.
    settings = sync_settings.model_copy(update={"enable_temporal": False})
    async with gateway_on(None, settings) as http:
        for method, path in (("GET", ""), ("GET", "/schedule"), ("DELETE", "/capture")):
            response = await http.request(method, f"/api/sync/{DATASET}{path}")
            assert response.status_code == 503, (method, path)
            assert "needs ENABLE_TEMPORAL=true" in response.json()["detail"]


async def test_a_second_post_while_a_run_goes_on_is_409(
    gateway: httpx.AsyncClient, source: Source
) -> None:
    await source.insert(5)
    # No worker polls this test's queue: the first run stays running.
    first = await gateway.post(f"/api/sync/{DATASET}")
    assert first.status_code == 202
    second = await gateway.post(f"/api/sync/{DATASET}", json={"full": True})
    assert second.status_code == 409
    assert second.json()["detail"]["workflowId"] == sync_workflow_id(DATASET)
    # Its progress is unknown without a worker to answer, and the read does not hang.
    status = (await gateway.get(f"/api/sync/{DATASET}")).json()
    assert (status["status"], status["progress"]) == ("running", None)


async def test_schedule_create_update_pause_resume_delete(gateway: httpx.AsyncClient) -> None:
    path = f"/api/sync/{DATASET}/schedule"
    created = await gateway.put(path, json={"every": "5m"})
    assert created.status_code == 200, created.text
    view = created.json()
    assert view["schedule_id"] == sync_schedule_id(DATASET)
    assert (view["every"], view["every_seconds"], view["paused"]) == ("5m", 300, False)
    assert view["next_runs"]

    assert (await gateway.post(f"{path}/pause")).json()["paused"] is True
    described = (await gateway.get(path)).json()
    assert described["paused"] is True
    assert "paused" in described["note"]
    # Creating it again updates the interval and keeps it paused.
    updated = (await gateway.put(path, json={"every": "1h30m"})).json()
    assert (updated["every"], updated["paused"]) == ("1h30m", True)
    assert (await gateway.post(f"{path}/resume")).json()["paused"] is False
    assert (await gateway.get(path)).json()["paused"] is False

    assert (await gateway.delete(path)).status_code == 204
    for method, url in (("GET", path), ("DELETE", path), ("POST", f"{path}/pause")):
        gone = await gateway.request(method, url)
        assert gone.status_code == 404, (method, url)
        assert "has no schedule" in gone.json()["detail"]


@pytest.mark.parametrize(
    ("every", "reason"),
    [("5 minutes", "not a number followed by"), ("5s", "shorter than 10s"), (300, "a string")],
)
async def test_a_bad_interval_is_422_with_its_reason(
    gateway: httpx.AsyncClient, every: Any, reason: str
) -> None:
    response = await gateway.put(f"/api/sync/{DATASET}/schedule", json={"every": every})
    assert response.status_code == 422
    assert reason in response.json()["detail"][0]["msg"]


async def test_a_triggered_schedule_syncs_and_skips_while_a_run_goes_on(
    gateway: httpx.AsyncClient,
    client: Client,
    sync_settings: Settings,
    source: Source,
    sync_worker: Services,
) -> None:
    ids = await source.insert(20)
    # A day apart, so only the triggers start runs during the test: an interval start could
    # otherwise take the dataset's id just before the test's own run does.
    assert (await gateway.put(f"/api/sync/{DATASET}/schedule", json={"every": "1d"})).is_success
    schedule = client.get_schedule_handle(sync_schedule_id(DATASET))
    await schedule.trigger()

    async def all_synced() -> bool | None:
        return await synced_ids(sync_settings, ids) == set(ids) or None

    await eventually(all_synced)
    schedules = SyncSchedules(client, sync_settings)

    async def no_scheduled_run() -> bool | None:
        # Wait until the triggered run has ended, so the next start is the one made while
        # the stuck run goes on.
        for started in (await schedules.describe(DATASET)).recent_runs:
            described = await client.get_workflow_handle(started.workflow_id).describe()
            if described.status is WorkflowExecutionStatus.RUNNING:
                return None
        return True

    await eventually(no_scheduled_run)
    seen = {r.workflow_id for r in (await schedules.describe(DATASET)).recent_runs}
    await start_stuck_run(client)
    # A scheduled workflow's id ends with its start time in whole seconds: a second trigger
    # within the same second as the first would reuse the first's id and start nothing.
    await asyncio.sleep(1.1)
    await schedule.trigger()

    async def a_new_start() -> str | None:
        recent = (await schedules.describe(DATASET)).recent_runs
        fresh = [r.workflow_id for r in recent if r.workflow_id not in seen]
        return fresh[-1] if fresh else None

    skipped = await client.get_workflow_handle(
        await eventually(a_new_start), result_type=SyncResult
    ).result()
    assert skipped.status is SyncStatus.SKIPPED


async def test_sync_run_follows_the_run_and_prints_its_counts(
    cli: list[str],
    cli_env: dict[str, str],
    client: Client,
    sync_settings: Settings,
    source_url: str,
    source: Source,
    sync_worker: Services,
) -> None:
    env = sync_env(cli_env, sync_settings, source_url)
    await source.insert(100)
    ran = await run_cli([*cli, "sync", "run", DATASET], env)
    assert ran.returncode == 0, ran.stderr
    # Not a terminal: plain lines, the last one the result.
    assert "\x1b[" not in ran.stdout
    assert ran.stdout.splitlines()[-1].startswith(
        f"sync {DATASET}: completed; 100 rows seen, 100 synced, 0 quarantined, 0 repaired"
    )
    await assert_targets_equal_source(sync_settings, source)

    status = await run_cli([*cli, "sync", "status", DATASET], env)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["progress"]["rows_synced"] == 100

    started = await run_cli([*cli, "sync", "run", DATASET, "--full", "--no-wait"], env)
    assert started.returncode == 0, started.stderr
    assert f"started workflow {sync_workflow_id(DATASET)}" in started.stdout
    await client.get_workflow_handle(sync_workflow_id(DATASET)).result()


async def test_sync_schedule_commands_and_refusals(
    cli: list[str],
    cli_env: dict[str, str],
    client: Client,
    sync_settings: Settings,
    source_url: str,
) -> None:
    env = sync_env(cli_env, sync_settings, source_url)
    try:
        scheduled = await run_cli([*cli, "sync", "schedule", DATASET, "--every", "5m"], env)
        assert scheduled.returncode == 0, scheduled.stderr
        assert f"{sync_schedule_id(DATASET)}: every 5m, active" in scheduled.stdout
        paused = await run_cli([*cli, "sync", "pause", DATASET], env)
        assert paused.returncode == 0, paused.stderr
        assert "every 5m, paused" in paused.stdout
        resumed = await run_cli([*cli, "sync", "resume", DATASET], env)
        assert "every 5m, active" in resumed.stdout
        removed = await run_cli([*cli, "sync", "unschedule", DATASET], env)
        assert removed.returncode == 0, removed.stderr
    finally:
        await stop_leftovers(client, sync_settings)
    again = await run_cli([*cli, "sync", "unschedule", DATASET], env)
    assert again.returncode == 1
    assert "has no schedule" in again.stderr

    for args in (["run", "nope"], ["schedule", "nope", "--every", "5m"], ["status", "nope"]):
        unknown = await run_cli([*cli, "sync", *args], env)
        assert unknown.returncode == 2, args
        assert "no dataset 'nope'" in unknown.stderr
    bad = await run_cli([*cli, "sync", "schedule", DATASET, "--every", "soon"], env)
    assert bad.returncode == 2
    assert "is not a number followed by" in bad.stderr

    listed = await run_cli([*cli, "sync", "datasets"], env)
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if f" {DATASET} " in line)
    assert "postgres:items" in row
    assert "sqlite" in row


# --- Operating log capture: the change log's lag in the status, resetting the capture, and
# the refusals a run gets before it starts.


async def sync_through(gateway: httpx.AsyncClient, client: Client) -> SyncResult:
    started = await gateway.post(f"/api/sync/{DATASET}")
    assert started.status_code == 202, started.text
    handle = client.get_workflow_handle(sync_workflow_id(DATASET), result_type=SyncResult)
    result: SyncResult = await handle.result()
    return result


async def capture_of(gateway: httpx.AsyncClient) -> dict[str, Any]:
    status = await gateway.get(f"/api/sync/{DATASET}")
    assert status.status_code == 200, status.text
    capture: dict[str, Any] = status.json()["capture"]
    return capture


async def source_fetch(url: str, sql: str, *args: Any) -> list[Any]:
    connection = await asyncpg.connect(url)
    try:
        return [tuple(row) for row in await connection.fetch(sql, *args)]
    finally:
        await connection.close()


async def _wal_position(url: str) -> int:
    connection = await asyncpg.connect(url)
    try:
        position: int = await connection.fetchval(
            "SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint"
        )
    finally:
        await connection.close()
    return position


async def test_the_status_shows_what_the_slot_holds_and_how_old_it_is(
    gateway: httpx.AsyncClient,
    client: Client,
    cli: list[str],
    cli_env: dict[str, str],
    sync_settings: Settings,
    source_url: str,
    source: Source,
    sync_worker: Services,
) -> None:
    await source.insert(30)
    await sync_through(gateway, client)
    caught_up = await capture_of(gateway)
    assert caught_up["created"] is True
    assert caught_up["lag"]["unit"] == "bytes"
    assert caught_up["lag"]["seconds"] == 0.0
    assert caught_up["lag"]["state"] == "reserved"
    assert caught_up["warning"] is None

    before_rows = await _wal_position(source_url)
    await source.insert(200, prefix="later")
    await asyncio.sleep(0.3)  # so the oldest pending commit has an age
    behind = await capture_of(gateway)
    # The slot holds at least the WAL of the 200 rows.
    assert behind["lag"]["pending"] > caught_up["lag"]["pending"] + 200 * 50
    assert behind["lag"]["seconds"] >= 0.3
    shown = await run_cli(
        [*cli, "sync", "status", DATASET], sync_env(cli_env, sync_settings, source_url)
    )
    assert shown.returncode == 0, shown.stderr
    lag = json.loads(shown.stdout)["capture"]["lag"]
    assert lag["pending"] >= behind["lag"]["pending"]
    assert lag["seconds"] >= behind["lag"]["seconds"]

    await sync_through(gateway, client)
    again = await capture_of(gateway)
    written_since = await _wal_position(source_url) - before_rows
    # The WAL is the whole cluster's: what follows the run's end (checkpoints, autovacuum,
    # other databases) stays pending, but the 200 rows' changes no longer do.
    assert again["lag"]["seconds"] == 0.0
    assert again["lag"]["pending"] <= written_since - 200 * 50


async def test_a_slot_holding_more_than_the_bound_warns(
    client: Client,
    cli: list[str],
    cli_env: dict[str, str],
    sync_settings: Settings,
    source_url: str,
    source: Source,
    sync_worker: Services,
) -> None:
    settings = sync_settings.model_copy(update={"sync_slot_lag_warn_bytes": 1000})
    async with gateway_on(client, settings) as http:
        await sync_through(http, client)
        await source.insert(50)
        capture = await capture_of(http)
    await stop_leftovers(client, settings)
    assert "more than SYNC_SLOT_LAG_WARN_BYTES (1000)" in capture["warning"]
    env = {**sync_env(cli_env, settings, source_url), "SYNC_SLOT_LAG_WARN_BYTES": "1000"}
    shown = await run_cli([*cli, "sync", "status", DATASET], env)
    assert shown.returncode == 0, shown.stderr
    assert "warning: the change log of items holds" in shown.stderr


async def test_reset_drops_the_slot_and_the_copy_state_and_the_next_run_copies_anew(
    gateway: httpx.AsyncClient,
    client: Client,
    sync_settings: Settings,
    source_url: str,
    source: Source,
    sync_worker: Services,
) -> None:
    ids = await source.insert(30)
    await sync_through(gateway, client)
    slots = "SELECT slot_name FROM pg_replication_slots WHERE slot_name = $1"
    assert await source_fetch(source_url, slots, slot_name(DATASET))

    reset = await gateway.delete(f"/api/sync/{DATASET}/capture")
    assert reset.status_code == 200, reset.text
    assert reset.json() == {"dataset": DATASET, "dropped": True}
    assert not await source_fetch(source_url, slots, slot_name(DATASET))
    publications = "SELECT pubname FROM pg_publication WHERE pubname = $1"
    assert not await source_fetch(source_url, publications, slot_name(DATASET))
    postgres = sync_worker.providers["postgres"]
    assert await postgres.get_records(WATERMARKS_DATASET, [DATASET]) == []
    assert await capture_of(gateway) == {
        "created": False, "lag": None, "lost": False, "warning": None, "error": None
    }  # fmt: skip
    again = await gateway.delete(f"/api/sync/{DATASET}/capture")
    assert again.json() == {"dataset": DATASET, "dropped": False}

    # Changes made while no log captures them, and a target row lost behind the sync's back:
    # the copy brings them all.
    await source.update(ids[3], name="changed while reset")
    await source.insert(5, prefix="while-reset")
    await sync_worker.providers["sqlite"].delete_records(DATASET, [ids[7]])
    result = await sync_through(gateway, client)
    assert result.progress.rows_synced == 35
    assert await source_fetch(source_url, slots, slot_name(DATASET))
    await assert_targets_equal_source(sync_settings, source)


async def test_deleting_the_schedule_with_drop_capture_drops_the_slot(
    gateway: httpx.AsyncClient,
    client: Client,
    source_url: str,
    source: Source,
    sync_worker: Services,
) -> None:
    slots = "SELECT slot_name FROM pg_replication_slots WHERE slot_name = $1"
    await source.insert(10)
    await sync_through(gateway, client)
    path = f"/api/sync/{DATASET}/schedule"
    # Without a schedule: 404, and the slot stays.
    assert (await gateway.delete(path, params={"dropCapture": "true"})).status_code == 404
    assert await source_fetch(source_url, slots, slot_name(DATASET))
    assert (await gateway.put(path, json={"every": "1d"})).is_success
    assert (await gateway.delete(path, params={"dropCapture": "true"})).status_code == 204
    assert not await source_fetch(source_url, slots, slot_name(DATASET))
    assert (await gateway.get(path)).status_code == 404


async def test_reset_is_refused_while_a_run_goes_on(
    gateway: httpx.AsyncClient,
    cli: list[str],
    cli_env: dict[str, str],
    client: Client,
    sync_settings: Settings,
    source_url: str,
) -> None:
    await start_stuck_run(client)
    refused = await gateway.delete(f"/api/sync/{DATASET}/capture")
    assert refused.status_code == 409
    assert refused.json()["detail"]["workflowId"] == sync_workflow_id(DATASET)
    ran = await run_cli(
        [*cli, "sync", "reset", DATASET], sync_env(cli_env, sync_settings, source_url)
    )
    assert ran.returncode == 1
    assert "is running" in ran.stderr


async def test_cli_reset_and_unschedule_drop_capture_drop_the_slot(
    cli: list[str],
    cli_env: dict[str, str],
    client: Client,
    sync_settings: Settings,
    source_url: str,
    source: Source,
    sync_worker: Services,
) -> None:
    env = sync_env(cli_env, sync_settings, source_url)
    slots = "SELECT slot_name FROM pg_replication_slots WHERE slot_name = $1"
    await source.insert(10)
    try:
        for drop in (["reset", DATASET], ["unschedule", DATASET, "--drop-capture"]):
            ran = await run_cli([*cli, "sync", "run", DATASET], env)
            assert ran.returncode == 0, ran.stderr
            assert await source_fetch(source_url, slots, slot_name(DATASET))
            await SyncSchedules(client, sync_settings).upsert(DATASET, parse_interval("1d"))
            dropped = await run_cli([*cli, "sync", *drop], env)
            assert dropped.returncode == 0, dropped.stderr
            assert f"change log of {DATASET} dropped" in dropped.stdout
            assert not await source_fetch(source_url, slots, slot_name(DATASET))
    finally:
        await stop_leftovers(client, sync_settings)


async def test_a_server_without_logical_decoding_is_refused_before_a_run_starts(
    client: Client, make_settings: Callable[..., Settings], cli: list[str], cli_env: dict[str, str]
) -> None:
    """The machine's server runs at wal_level=replica."""
    async with fresh_database() as url:
        await Source(url).create_table()
        settings = make_settings(
            enable_postgres=True, postgres_url=url, enable_sqlite=True,
            sync_datasets=[ITEMS_DATASET],
        )  # fmt: skip
        async with gateway_on(client, settings) as http:
            refused = await http.post(f"/api/sync/{DATASET}")
        ran = await run_cli([*cli, "sync", "run", DATASET], sync_env(cli_env, settings, url))
    assert refused.status_code == 409
    message = refused.json()["detail"]["message"]
    assert "wal_level=logical" in message
    assert '"capture": "poll"' in message
    assert "misses hard deletes" in message
    assert ran.returncode == 2
    assert "wal_level=logical" in ran.stderr
    # Nothing started.
    assert await no_run(client)


async def no_run(client: Client) -> bool:
    """No run of the dataset is going on (one started here would be: no worker polls)."""
    try:
        described = await client.get_workflow_handle(sync_workflow_id(DATASET)).describe()
    except RPCError as error:
        return error.status == RPCStatusCode.NOT_FOUND
    return described.status is not WorkflowExecutionStatus.RUNNING


async def test_a_table_without_a_primary_key_is_refused_before_a_run_starts(
    client: Client,
    sync_settings: Settings,
    source: Source,
    source_url: str,
    cli: list[str],
    cli_env: dict[str, str],
) -> None:
    await source.execute("ALTER TABLE items DROP CONSTRAINT items_pkey")
    async with gateway_on(client, sync_settings) as http:
        refused = await http.post(f"/api/sync/{DATASET}")
    assert refused.status_code == 409
    assert "no primary key or replica identity" in refused.json()["detail"]["message"]
    ran = await run_cli(
        [*cli, "sync", "run", DATASET], sync_env(cli_env, sync_settings, source_url)
    )
    assert ran.returncode == 2
    assert "no primary key or replica identity" in ran.stderr
    assert await no_run(client)
    providers = enabled_providers(sync_settings)
    try:
        assert await providers["postgres"].get_records(WATERMARKS_DATASET, [DATASET]) == []
    finally:
        for provider in providers.values():
            await provider.close()


async def test_a_slot_the_server_invalidated_shows_as_lost_until_reset(
    client: Client, make_settings: Callable[..., Settings]
) -> None:
    """A cluster that keeps at most 1 MB of WAL for a slot: the slot of a dataset that is not
    synced while WAL grows is invalidated, the status says so, and a reset makes the next run
    copy the table anew."""
    async with (
        private_cluster("-c wal_level=logical", "-c max_slot_wal_keep_size=1MB") as (admin, _),
        fresh_database(admin) as url,
    ):
        source = Source(url)
        await source.create_table()
        await source.execute("CREATE TABLE filler (n int)")
        settings = make_settings(
            enable_postgres=True, postgres_url=url, enable_sqlite=True,
            sync_datasets=[ITEMS_DATASET],
        )  # fmt: skip
        services = Services.from_settings(settings, client)
        try:
            async with build_worker(client, services), gateway_on(client, settings) as http:
                await source.insert(10)
                await sync_through(http, client)
                await source.insert(5, prefix="unsynced")

                async def slot_lost() -> bool | None:
                    # New segments, and a checkpoint that removes the old ones.
                    await source.execute("INSERT INTO filler VALUES (1)")
                    await source.execute("SELECT pg_switch_wal()")
                    await source.execute("CHECKPOINT")
                    rows = await source_fetch(
                        url, "SELECT wal_status FROM pg_replication_slots WHERE slot_name = $1",
                        slot_name(DATASET),
                    )  # fmt: skip
                    return rows == [("lost",)] or None

                await eventually(slot_lost)
                capture = await capture_of(http)
                assert capture["lost"] is True
                assert f"nexpo-workflows sync reset {DATASET}" in capture["warning"]
                assert (await http.delete(f"/api/sync/{DATASET}/capture")).status_code == 200
                result = await sync_through(http, client)
            assert result.progress.rows_synced == 15
            await assert_targets_equal_source(settings, source)
        finally:
            await services.close()
            await stop_leftovers(client, settings)
