"""Chaos: 500 onboardings and a sync run while providers fail at random, workers are SIGKILLed
and restarted, and the Temporal server itself restarts. Then every database is read directly.

Runs in CI (marker ``chaos``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import sqlite3
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from pymongo import AsyncMongoClient
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError

from nexpo_workflows.client import connect
from nexpo_workflows.config import Settings
from nexpo_workflows.devserver import DevServer, start_dev_server
from nexpo_workflows.ports import free_port
from nexpo_workflows.sync.models import SyncInput, SyncResult
from nexpo_workflows.sync.workflow import DataSyncWorkflow, sync_workflow_id
from nexpo_workflows.users.models import OnboardingInput, SagaResult
from nexpo_workflows.users.workflows import UserOnboardingWorkflow
from tests.servers.mongodb import running_mongodb
from tests.servers.postgres import fresh_database
from tests.sync_source import DATASET, ITEMS_DATASET, Source

ONBOARDINGS = 500  # distinct emails; 50 more sagas compete for some of them
SYNCED_ROWS = 3000  # rows of the sync run, in batches small enough to span the chaos
HASH = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo"
ROOT = Path(__file__).resolve().parent.parent
TASK_QUEUE = "chaos"

pytestmark = pytest.mark.chaos


class Workers:
    """Chaos worker processes that can be killed and replaced."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env = env
        self.log = log
        self.processes: list[asyncio.subprocess.Process] = []
        self.kills = 0

    async def start(self) -> None:
        with self.log.open("ab") as log:
            self.processes.append(
                await asyncio.create_subprocess_exec(
                    *(sys.executable, "-m", "tests.chaos_worker"),
                    env=self.env,
                    cwd=ROOT,
                    stdout=log,
                    stderr=log,
                )
            )

    async def kill_one(self) -> None:
        victim = self.processes.pop(0)
        victim.send_signal(signal.SIGKILL)
        await victim.wait()
        self.kills += 1
        await self.start()

    async def stop(self) -> None:
        for process in self.processes:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()


@contextlib.asynccontextmanager
async def chaos_stack(
    tmp_path: Path, postgres_admin_url: str
) -> AsyncIterator[tuple[Settings, dict[str, str]]]:
    async with (
        fresh_database(postgres_admin_url) as postgres_url,
        running_mongodb() as mongodb_url,
    ):
        source = Source(postgres_url)
        await source.create_table()
        await source.insert(SYNCED_ROWS)
        settings = Settings(
            _env_file=None,
            enable_temporal=True,
            temporal_task_queue=TASK_QUEUE,
            enable_postgres=True,
            postgres_url=postgres_url,
            enable_mongodb=True,
            mongodb_url=mongodb_url,
            mongodb_database="chaos",
            enable_sqlite=True,
            sqlite_path=tmp_path / "chaos.db",
            onboarding_timeout_seconds=60,
            onboarding_step_timeout_seconds=5,
            metrics_bind_address="",
        )
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "ENABLE_"))},
            "ENABLE_TEMPORAL": "true",
            "TEMPORAL_TASK_QUEUE": TASK_QUEUE,
            "TEMPORAL_CONNECT_TIMEOUT_SECONDS": "60",
            "ENABLE_POSTGRES": "true",
            "POSTGRES_URL": postgres_url,
            "ENABLE_MONGODB": "true",
            "MONGODB_URL": mongodb_url,
            "MONGODB_DATABASE": "chaos",
            "ENABLE_SQLITE": "true",
            "SQLITE_PATH": str(tmp_path / "chaos.db"),
            "ONBOARDING_TIMEOUT_SECONDS": "60",
            "ONBOARDING_STEP_TIMEOUT_SECONDS": "5",
            "METRICS_BIND_ADDRESS": "off",
            "CHAOS_FAULT_RATE": "0.1",
            "SYNC_DATASETS": json.dumps([ITEMS_DATASET]),
            "SYNC_BATCH_SIZE": "100",
            "SYNC_BATCHES_PER_RUN": "10",
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
            "LOG_LEVEL": "ERROR",
        }
        yield settings, env


async def start_sync(client: Client) -> WorkflowHandle[Any, SyncResult]:
    return await client.start_workflow(
        DataSyncWorkflow.run,
        SyncInput(dataset=DATASET),
        id=sync_workflow_id(DATASET),
        task_queue=TASK_QUEUE,
    )


async def sync_result(handle: WorkflowHandle[Any, SyncResult]) -> str:
    return await closed_status(handle, lambda error: f"failed: {error.cause}")


def content_digest(rows: dict[str, tuple[bool, Any]]) -> str:
    """One SHA-256 over every row's id, tombstone flag and fields."""
    canonical = json.dumps(sorted(rows.items()), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


async def sync_checksums(settings: Settings) -> dict[str, str]:
    """A digest of the items' content at the source and in each target, read directly."""
    contents: dict[str, dict[str, tuple[bool, Any]]] = {
        "postgres": await Source(settings.postgres_url.get_secret_value()).contents()
    }
    with sqlite3.connect(settings.sqlite_file) as db:
        contents["sqlite"] = {
            i: (bool(d), json.loads(data))
            for i, d, data in db.execute(
                "SELECT id, deleted, data FROM nexpo_records WHERE dataset = ?", (DATASET,)
            )
        }
    mongo_client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        settings.mongodb_url.get_secret_value()
    )
    try:
        contents["mongodb"] = {
            str(doc["id"]): (bool(doc["deleted"]), doc["data"])
            async for doc in mongo_client["chaos"]["nexpo_records"].find({"dataset": DATASET})
        }
    finally:
        await mongo_client.close()
    return {name: content_digest(found) for name, found in contents.items()}


async def start_with_retries(
    client: Client, email: str, workflow_id: str
) -> WorkflowHandle[Any, SagaResult]:
    for _ in range(120):
        try:
            return await client.start_workflow(
                UserOnboardingWorkflow.run,
                OnboardingInput(email=email, name="Chaos Monkey", password_hash=HASH),
                id=workflow_id,
                task_queue=TASK_QUEUE,
            )
        except WorkflowAlreadyStartedError:
            break  # an earlier attempt did start it; its answer was lost in a restart
        except RPCError:
            await asyncio.sleep(0.5)  # the server is restarting
    return client.get_workflow_handle_for(UserOnboardingWorkflow.run, workflow_id)


async def closed_status(
    handle: WorkflowHandle[Any, Any], failed: Callable[[WorkflowFailureError], str]
) -> str:
    """The status of the workflow's result, or what ``failed`` says of its failure, waiting
    through server restarts."""
    for _ in range(600):
        try:
            return str((await handle.result()).status)
        except WorkflowFailureError as error:
            return failed(error)
        except RPCError:
            await asyncio.sleep(0.5)  # the server is restarting
    return "unknown"


def saga_failure(error: WorkflowFailureError) -> str:
    """A failed saga's status and why: ``rolled_back:DuplicateEmail``."""
    details = getattr(error.cause, "details", None)
    if details:
        result = SagaResult.model_validate(details[0])
        return f"{result.status}:{result.failure_kind}"
    return "failed"


async def outcome(handle: WorkflowHandle[Any, SagaResult]) -> str:
    return await closed_status(handle, saga_failure)


async def read_all(settings: Settings) -> dict[str, list[tuple[str, str]]]:
    """(id, email) of every record in each database, read directly, not through providers."""
    connection = await asyncpg.connect(settings.postgres_url.get_secret_value())
    try:
        postgres = [
            (r["id"], r["email"])
            for r in await connection.fetch("SELECT id, email FROM nexpo_users")
        ]
    finally:
        await connection.close()
    with sqlite3.connect(settings.sqlite_file) as db:
        sqlite = list(db.execute("SELECT id, email FROM nexpo_users"))
    mongo_client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(
        settings.mongodb_url.get_secret_value()
    )
    try:
        mongodb = [
            (str(doc["_id"]), str(doc["email"]))
            async for doc in mongo_client["chaos"]["users"].find({}, {"email": 1})
        ]
    finally:
        await mongo_client.close()
    return {"postgres": postgres, "sqlite": sqlite, "mongodb": mongodb}


async def test_chaos_onboardings_leave_every_user_everywhere_or_nowhere(
    tmp_path: Path, logical_postgres: str
) -> None:
    port = free_port()
    db_file = tmp_path / "temporal.db"

    async def start_server() -> DevServer:
        return await start_dev_server(
            host="127.0.0.1", port=port, log_path=tmp_path / "temporal.log", db_file=db_file
        )

    server = await start_server()
    async with chaos_stack(tmp_path, logical_postgres) as (settings, env):
        settings = settings.model_copy(update={"temporal_server_url": server.address})
        env["TEMPORAL_SERVER_URL"] = server.address
        client = await connect(settings)
        workers = Workers(env, tmp_path / "workers.log")
        try:
            for _ in range(2):
                await workers.start()
            emails = [f"chaos.{i}.{uuid.uuid4().hex[:6]}@example.com" for i in range(ONBOARDINGS)]
            gate = asyncio.Semaphore(25)

            async def onboard(email: str, workflow_id: str) -> str:
                async with gate:
                    return await outcome(await start_with_retries(client, email, workflow_id))

            async def chaos() -> None:
                nonlocal server
                for step in range(5):
                    await asyncio.sleep(4)
                    if step == 2:
                        await server.stop()
                        await asyncio.sleep(1)
                        server = await start_server()
                    else:
                        await workers.kill_one()

            # Every tenth email is also claimed by a second saga for another user: one of
            # the two must roll back without touching the other's records.
            runs = [(email, f"chaos-{email}") for email in emails] + [
                (email, f"chaos-rival-{email}") for email in emails[::10]
            ]
            syncing = await start_sync(client)
            results, _, synced = await asyncio.gather(
                asyncio.gather(*(onboard(email, workflow_id) for email, workflow_id in runs)),
                chaos(),
                sync_result(syncing),
            )
            for _ in range(100):  # visibility trails the histories by a moment
                running = [w.id async for w in client.list_workflows("ExecutionStatus = 'Running'")]
                if not running:
                    break
                await asyncio.sleep(0.2)
        finally:
            await workers.stop()
            await server.stop()
        stored = await read_all(settings)
        checksums = await sync_checksums(settings)

    outcomes = Counter(results)
    per_database = {name: Counter(email for _, email in rows) for name, rows in stored.items()}
    ids = {name: dict((email, i) for i, email in rows) for name, rows in stored.items()}
    everywhere = nowhere = partial = 0
    for email in emails:
        present = [email in per_database[name] for name in stored]
        if all(present) and len({ids[name][email] for name in stored}) == 1:
            everywhere += 1
        elif not any(present):
            nowhere += 1
        else:
            partial += 1
    duplicates = sum(count > 1 for counts in per_database.values() for count in counts.values())
    print(
        f"\nchaos: {len(runs)} onboardings, {workers.kills} worker kills, 1 server restart; "
        f"outcomes {dict(outcomes)}; users in every database {everywhere}, in none {nowhere}, "
        f"partial {partial}; duplicates {duplicates}; workflows still running {len(running)}; "
        f"sync {synced}, checksums {checksums}"
    )
    assert workers.kills == 4
    assert partial == 0
    assert duplicates == 0
    assert running == []
    assert everywhere == ONBOARDINGS
    assert outcomes == {
        "completed": ONBOARDINGS,
        "rolled_back:DuplicateEmail": len(emails[::10]),
    }
    assert synced == "completed"
    assert checksums["sqlite"] == checksums["mongodb"] == checksums["postgres"]
