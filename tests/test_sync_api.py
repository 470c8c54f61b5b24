"""/api/sync and `nexpo-workflows sync ...` on a real Temporal server: PostgreSQL as the
source (the table of tests/test_sync.py), SQLite as the target."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

import httpx
import pytest
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError

from nexpo_workflows.api.app import create_app
from nexpo_workflows.api.deps import GatewayState
from nexpo_workflows.config import Settings
from nexpo_workflows.providers import enabled_providers
from nexpo_workflows.services import Services
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
from tests.sync_source import (
    DATASET,
    Source,
    assert_targets_equal_source,
    eventually,
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


async def test_without_temporal_the_routes_answer_503(sync_settings: Settings) -> None:
    settings = sync_settings.model_copy(update={"enable_temporal": False})
    async with gateway_on(None, settings) as http:
        for method, path in (("POST", ""), ("GET", ""), ("GET", "/schedule")):
            response = await http.request(method, f"/api/sync/{DATASET}{path}")
            assert response.status_code == 503, (method, path)
            assert "ENABLE_TEMPORAL is false" in response.json()["detail"]


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


def sync_env(cli_env: dict[str, str], settings: Settings, source_url: str) -> dict[str, str]:
    datasets = [d.model_dump(mode="json", by_alias=True) for d in settings.sync_datasets]
    return {
        **cli_env,
        "ENABLE_POSTGRES": "true",
        "POSTGRES_URL": source_url,
        "ENABLE_SQLITE": "true",
        "SQLITE_PATH": str(settings.sqlite_file),
        "SYNC_DATASETS": json.dumps(datasets),
    }


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
