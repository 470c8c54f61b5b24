"""Sync throughput and worker memory against a raw bulk copy between the same two servers.

Run from the repository root (after `bash scripts/test.sh` has installed everything):

    PYTHONPATH=src .venv/bin/python -m benchmarks.sync_throughput \
        [--rows 100000,1000000] [--targets sqlite,postgres,mongodb] [--batch-size 10000] \
        [--sync-batch-size N] [--profile DIR]

(``pip install -e .[bench]`` first: the peer loader; ``--targets`` may also name ``cosmosdb``
and ``supabase``, left out by default: the Cosmos DB emulator is slow.) For each number of
rows, a fresh database on a PostgreSQL server at wal_level=logical holds a source table of
~200-byte rows (one in 50 a tombstone), filled by COPY. For each target:

- ``raw``, the ceiling: the same rows read with asyncpg in keyset batches of ``--batch-size``
  and written in bulk with the write the sync does, one batch at a time (SQLite:
  ``executemany`` of an ``INSERT ... ON CONFLICT DO UPDATE``, one transaction per batch,
  through aiosqlite; PostgreSQL, another database of the same server: binary COPY into a
  staging table and one ``INSERT ... SELECT ... ON CONFLICT DO UPDATE`` per batch; MongoDB:
  unordered ``insert_many`` through PyMongo's async client, on SecantusDB, the sync's first
  write to a new target too; Cosmos DB, on the emulator the tests start: one ``upsert_item``
  per row through ``azure-cosmos``'s async client, the provider's bound of requests in flight,
  items of the provider's records in a container of another database; Supabase, PostgREST on
  a PostgreSQL database as the tests start it: one upsert request per batch through the
  ``supabase`` client, rows of the provider's records in another table of that database);
- ``sync``: DataSyncWorkflow for the dataset (the copy of the table: read, validation by the
  dataset's pydantic schema, write, verification) on an in-memory Temporal dev server, run by
  ``nexpo-workflows worker`` in a process of its own, in batches of ``--sync-batch-size``
  (default: ``--batch-size``), timed from start to result, with the peak RSS (VmHWM) and CPU
  seconds of the worker and its read-ahead process together; the PostgreSQL target is the SQL
  provider of the ``sqlserver`` slot given a PostgreSQL URL (the worker's ``postgres`` provider is
  the source); the ``cosmosdb`` and ``supabase`` targets are those providers, on the same servers
  as their raw copy (Cosmos DB: a new database per size; Supabase: its one records table emptied
  before each sync);
- ``peer``: dlt's ``sql_database`` source (``sql_table``, SQLAlchemy backend, psycopg2) into
  the same kind of target (SQLite through dlt's ``sqlalchemy`` destination, PostgreSQL through
  its ``postgres`` destination; dlt has no MongoDB, Cosmos DB or PostgREST destination: ``-``
  there), write disposition ``merge`` on the key (an upsert, as the sync), timed from start
  to its load, in a thread of the benchmark's process.

Prints rows/s of each, sync/raw (goal: >= 0.7), the worker's peak RSS, CPU seconds per 100,000
rows of the raw copy (the benchmark's process; for Supabase, with the gateway in front of
PostgREST, which runs there) and of the worker (less noisy than wall-clock on a shared machine),
the whole machine's CPU seconds per 100,000 rows during each copy (servers included: against its
cores, how near a copy is to what the machine can do), the seconds in each step of the sync and in
its workflow tasks, and per target the peak RSS of the largest size over the smallest's (goal <=
1.2: memory flat). With ``--profile DIR``, py-spy samples each sync's worker (GIL holder only,
collapsed stacks in DIR) and the worker's CPU per thread is printed. Every figure is wall-clock on
whatever else the machine runs: the load average before and after is printed beside them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiosqlite
import asyncpg
import httpx
from azure.cosmos import PartitionKey
from azure.cosmos.aio import CosmosClient
from postgrest import APIError
from postgrest.types import ReturnMethod
from pymongo import AsyncMongoClient
from supabase import AsyncClient, AsyncClientOptions, acreate_client
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client
from tests.servers.cosmosdb import EMULATOR_KEY, running_cosmosdb
from tests.servers.mongodb import running_mongodb
from tests.servers.postgres import fresh_database, logical_server
from tests.servers.supabase import SupabaseStack, running_supabase

from nexpo_workflows.client import connect
from nexpo_workflows.config import Settings
from nexpo_workflows.devserver import start_dev_server
from nexpo_workflows.ports import free_port
from nexpo_workflows.providers.base import RECORDS_STORE, DatasetRecord
from nexpo_workflows.providers.cosmosdb import RECORDS_PARTITION_KEY_PATH, concurrently, record_item
from nexpo_workflows.providers.supabase import DEFAULT_TIMEOUT_SECONDS
from nexpo_workflows.sync.models import SyncInput, SyncStatus
from nexpo_workflows.sync.workflow import DataSyncWorkflow, sync_workflow_id

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(sys.executable).parent / "nexpo-workflows"
TABLE = "items"
COLUMNS = ("id", "name", "price", "description", "category", "updated_at", "deleted")
START = datetime(2026, 1, 1, tzinfo=UTC)
DESCRIPTION = (
    "A sturdy, plain item of the benchmark catalogue, described at some length so that a row "
    "weighs about what a product row of a real shop does."
)
CATEGORIES = ("tools", "garden", "kitchen", "books", "toys")
TOMBSTONE_EVERY = 50
WORKER_READY_TIMEOUT_SECONDS = 60.0
# How long PostgREST may take to see the raw copy's new table (its schema cache reloaded).
SCHEMA_RELOAD_TIMEOUT_SECONDS = 30.0

# The provider each target is synced through.
PROVIDERS = {
    "sqlite": "sqlite",
    "mongodb": "mongodb",
    "postgres": "sqlserver",
    "cosmosdb": "cosmosdb",
    "supabase": "supabase",
}
RawWrite = Callable[[list[asyncpg.Record]], Awaitable[None]]


def source_rows(count: int) -> Iterator[tuple[Any, ...]]:
    for n in range(count):
        yield (
            f"item-{n:08d}",
            f"name of item {n}",
            Decimal(n % 100_000) / 100,
            f"{n:08d} {DESCRIPTION}",
            CATEGORIES[n % len(CATEGORIES)],
            START + timedelta(milliseconds=n),
            n % TOMBSTONE_EVERY == 0,
        )


async def fill_source(url: str, rows: int) -> None:
    connection = await asyncpg.connect(url)
    try:
        await connection.execute(
            f"CREATE TABLE {TABLE} (id text PRIMARY KEY, name text NOT NULL,"
            " price numeric NOT NULL, description text NOT NULL, category text NOT NULL,"
            " updated_at timestamptz NOT NULL, deleted boolean NOT NULL DEFAULT false)"
        )
        await connection.copy_records_to_table(TABLE, records=source_rows(rows), columns=COLUMNS)
        # What any source of a sync needs: the keyset the sync reads by, indexed.
        await connection.execute(f"CREATE INDEX {TABLE}_keyset ON {TABLE} (updated_at, id)")
        await connection.execute(f"ANALYZE {TABLE}")
    finally:
        await connection.close()


def plain(row: asyncpg.Record) -> tuple[Any, ...]:
    """A source row as JSON-like values: what the sync's targets receive too."""
    return (
        row["id"],
        row["name"],
        str(row["price"]),
        row["description"],
        row["category"],
        row["updated_at"].isoformat(),
        row["deleted"],
    )


def record_fields(row: asyncpg.Record) -> dict[str, Any]:
    """A source row as the sync's record of it (``DatasetRecord``'s fields as JSON values): the
    key, a version in microseconds, the tombstone flag and the schema's fields (none for a
    tombstone), for the targets that store records."""
    values = plain(row)
    deleted = values[-1]
    return {
        "id": values[0],
        "version": (row["updated_at"] - START) // timedelta(microseconds=1),
        "deleted": deleted,
        "data": {} if deleted else dict(zip(COLUMNS[:-1], values[:-1], strict=True)),
    }


@contextlib.asynccontextmanager
async def sqlite_sink(path: Path) -> AsyncIterator[RawWrite]:
    async with aiosqlite.connect(path) as database:
        await database.execute(
            f"CREATE TABLE {TABLE} (id TEXT PRIMARY KEY, name TEXT NOT NULL, price TEXT NOT NULL,"
            " description TEXT NOT NULL, category TEXT NOT NULL, updated_at TEXT NOT NULL,"
            " deleted INTEGER NOT NULL)"
        )
        await database.commit()
        updates = ", ".join(f"{name} = excluded.{name}" for name in COLUMNS[1:])
        insert = (
            f"INSERT INTO {TABLE} ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * 7)})"
            f" ON CONFLICT (id) DO UPDATE SET {updates}"
        )

        async def write(rows: list[asyncpg.Record]) -> None:
            await database.executemany(insert, [plain(row) for row in rows])
            await database.commit()

        yield write


@contextlib.asynccontextmanager
async def postgres_sink(url: str) -> AsyncIterator[RawWrite]:
    """PostgreSQL's bulk upsert, as the sync's: binary COPY into a staging table, then one
    ``INSERT ... SELECT ... ON CONFLICT DO UPDATE`` from it, one transaction per batch."""
    connection = await asyncpg.connect(url)
    try:
        await connection.execute(
            f"CREATE TABLE {TABLE} (id text PRIMARY KEY, name text NOT NULL,"
            " price numeric NOT NULL, description text NOT NULL, category text NOT NULL,"
            " updated_at timestamptz NOT NULL, deleted boolean NOT NULL)"
        )
        await connection.execute(
            f"CREATE TEMPORARY TABLE {TABLE}_staging (LIKE {TABLE}) ON COMMIT DELETE ROWS"
        )
        updates = ", ".join(f"{name} = excluded.{name}" for name in COLUMNS[1:])
        upsert = (
            f"INSERT INTO {TABLE} SELECT * FROM {TABLE}_staging"
            f" ON CONFLICT (id) DO UPDATE SET {updates}"
        )

        async def write(rows: list[asyncpg.Record]) -> None:
            async with connection.transaction():
                await connection.copy_records_to_table(
                    f"{TABLE}_staging", records=rows, columns=COLUMNS
                )
                await connection.execute(upsert)

        yield write
    finally:
        await connection.close()


@contextlib.asynccontextmanager
async def mongodb_sink(url: str, database: str) -> AsyncIterator[RawWrite]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(url)
    try:
        collection = client[database][TABLE]

        async def write(rows: list[asyncpg.Record]) -> None:
            documents = [dict(zip(("_id", *COLUMNS[1:]), plain(row), strict=True)) for row in rows]
            await collection.insert_many(documents, ordered=False)

        yield write
    finally:
        await client.close()


@contextlib.asynccontextmanager
async def cosmosdb_sink(endpoint: str, database: str, dataset: str) -> AsyncIterator[RawWrite]:
    """Cosmos DB's write, as the sync's: one ``upsert_item`` per record, the provider's bound of
    requests in flight, into a records container of its own (partitioned by dataset, items of
    the provider's shape)."""
    async with CosmosClient(
        endpoint, credential=EMULATOR_KEY.get_secret_value(), connection_verify=False
    ) as client:
        created = await client.create_database_if_not_exists(database)
        container = await created.create_container_if_not_exists(
            RECORDS_STORE, partition_key=PartitionKey(path=RECORDS_PARTITION_KEY_PATH)
        )

        async def upsert(row: asyncpg.Record) -> None:
            record = DatasetRecord.model_construct(**record_fields(row))
            await container.upsert_item(record_item(dataset, record))

        async def write(rows: list[asyncpg.Record]) -> None:
            await concurrently(upsert, rows)

        yield write


async def served(client: AsyncClient, table: str) -> None:
    """Return once PostgREST writes to ``table``, new since it started: only once its schema
    cache has reloaded (it reads such a table before, but answers a write with 404). The probe
    it writes is removed again."""
    probe = {"dataset": "", "id": "probe", "version": 0, "deleted": True, "data": {}}
    deadline = time.monotonic() + SCHEMA_RELOAD_TIMEOUT_SECONDS
    while True:
        try:
            await (
                client.table(table)
                .upsert(probe, on_conflict="dataset,id", returning=ReturnMethod.minimal)
                .execute()
            )
            break
        except APIError:
            if time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.1)
    await client.table(table).delete(returning=ReturnMethod.minimal).eq("dataset", "").execute()


@contextlib.asynccontextmanager
async def supabase_sink(stack: SupabaseStack, table: str, dataset: str) -> AsyncIterator[RawWrite]:
    """Supabase's write, as the sync's: the provider's client and one PostgREST upsert of the
    batch (``on_conflict`` on the key, minimal return), into a table of its own shaped like the
    records table."""
    connection = await asyncpg.connect(stack.database_url)
    try:
        await connection.execute(
            f"CREATE TABLE {table} (LIKE {RECORDS_STORE} INCLUDING ALL);"
            f" GRANT ALL ON {table} TO service_role; NOTIFY pgrst, 'reload schema'"
        )
    finally:
        await connection.close()
    async with httpx.AsyncClient(timeout=httpx.Timeout(DEFAULT_TIMEOUT_SECONDS)) as http:
        client = await acreate_client(
            stack.url,
            stack.service_role_key,
            AsyncClientOptions(
                httpx_client=http,
                postgrest_client_retry=False,
                auto_refresh_token=False,
                persist_session=False,
            ),
        )
        await served(client, table)

        async def write(rows: list[asyncpg.Record]) -> None:
            records = [{"dataset": dataset, **record_fields(row)} for row in rows]
            await (
                client.table(table)
                .upsert(records, on_conflict="dataset,id", returning=ReturnMethod.minimal)
                .execute()
            )

        yield write


async def empty_records(stack: SupabaseStack) -> None:
    """Empty the records table the sync writes to through PostgREST (one for every size)."""
    connection = await asyncpg.connect(stack.database_url)
    try:
        await connection.execute(f"TRUNCATE {RECORDS_STORE}")
    finally:
        await connection.close()


async def raw_copy(
    postgres_url: str, batch_size: int, write: RawWrite
) -> tuple[float, float, float]:
    """Rows per second of a keyset read from PostgreSQL, each batch written by ``write``, the
    CPU seconds this process spent on it, and those of the whole machine meanwhile."""
    connection = await asyncpg.connect(postgres_url)
    query = f"SELECT {', '.join(COLUMNS)} FROM {TABLE} WHERE id > $1 ORDER BY id LIMIT $2"
    copied, last = 0, ""
    try:
        began, cpu, machine = time.perf_counter(), time.process_time(), machine_cpu_seconds()
        while batch := await connection.fetch(query, last, batch_size):
            await write(batch)
            copied += len(batch)
            last = batch[-1]["id"]
        rate = copied / (time.perf_counter() - began)
        return rate, time.process_time() - cpu, machine_cpu_seconds() - machine
    finally:
        await connection.close()


def peer_load(source_url: str, rows: int, target_url: str, directory: Path, batch: int) -> float:
    """Rows per second of dlt moving the source table into the database of ``target_url`` (a
    SQLite file through SQLAlchemy, or PostgreSQL), merging on the key."""
    import dlt
    from dlt.sources.sql_database import sql_table

    table = sql_table(
        credentials=source_url.replace("postgresql://", "postgresql+psycopg2://", 1),
        table=TABLE,
        chunk_size=batch,
        backend="sqlalchemy",
    )
    table.apply_hints(primary_key="id", write_disposition="merge")
    pipeline = dlt.pipeline(
        pipeline_name=f"peer_{rows}_{target_url.partition(':')[0]}",
        destination=(
            # dlt requires a password; the benchmark's server trusts local connections.
            dlt.destinations.postgres(credentials=target_url.replace("@", ":unused@", 1))
            if target_url.startswith("postgresql")
            else dlt.destinations.sqlalchemy(credentials=target_url)
        ),
        dataset_name="main",
        pipelines_dir=str(directory),
    )
    began = time.perf_counter()
    pipeline.run(table)
    return rows / (time.perf_counter() - began)


def worker_environment(values: dict[str, str]) -> dict[str, str]:
    """``values`` over the caller's environment without any of its nexpo settings, so only
    what the benchmark sets configures the worker."""
    known = {name.upper() for name in Settings.model_fields}
    inherited = {k: v for k, v in os.environ.items() if k.upper() not in known}
    # The worker imports the dataset's schema from this repository's benchmarks package.
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return inherited | {"PYTHONPATH": path} | values


async def wait_for_pollers(
    client: Client, task_queue: str, worker: asyncio.subprocess.Process
) -> None:
    """Return once the worker polls for both workflow and activity tasks, so the timing
    leaves out its start-up."""
    deadline = time.monotonic() + WORKER_READY_TIMEOUT_SECONDS
    kinds = (TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW, TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY)
    while time.monotonic() < deadline:
        if worker.returncode is not None:
            raise RuntimeError(f"the worker exited with {worker.returncode}")
        described = [
            await client.workflow_service.describe_task_queue(
                DescribeTaskQueueRequest(
                    namespace=client.namespace,
                    task_queue=TaskQueue(name=task_queue),
                    task_queue_type=kind,
                )
            )
            for kind in kinds
        ]
        if all(answer.pollers for answer in described):
            return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"no worker polls {task_queue} after {WORKER_READY_TIMEOUT_SECONDS} s")


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants: the worker and its read-ahead process."""
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        found.append(current)
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += [int(child) for child in (task / "children").read_text().split()]
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds ``pid`` and its descendants have used so far (every thread);
    a descendant that has ended no longer counts."""
    total = 0
    for member in process_tree(pid):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{member}/stat").read_text().rpartition(")")[2].split()
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def machine_cpu_seconds() -> float:
    """CPU seconds every process of the machine has used so far, all cores together."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def thread_cpu_seconds(pid: int) -> dict[str, float]:
    """CPU seconds of each of the process's threads so far, summed by thread name."""
    totals: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            name = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rpartition(")")[2].split()
            seconds = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            totals[name] = totals.get(name, 0.0) + seconds
    return totals


def peak_rss_mib(pid: int) -> float:
    """The peak RSS (VmHWM) of ``pid`` and of each of its descendants, summed."""
    total = 0
    for member in process_tree(pid):
        for line in Path(f"/proc/{member}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                total += int(line.split()[1])
    if not total:
        raise RuntimeError(f"no VmHWM for process {pid}")
    return total / 1024


@contextlib.asynccontextmanager
async def running_worker(
    client: Client, environment: dict[str, str], task_queue: str, log: Path
) -> AsyncIterator[asyncio.subprocess.Process]:
    with log.open("ab") as output:
        worker = await asyncio.create_subprocess_exec(
            str(WORKER),
            "worker",
            env=environment,
            cwd=log.parent,  # no .env of the repository is read
            stdin=asyncio.subprocess.DEVNULL,
            stdout=output,
            stderr=output,
        )
    try:
        try:
            await wait_for_pollers(client, task_queue, worker)
        except RuntimeError as error:
            # The directory and its log are gone once the benchmark ends.
            text = await asyncio.to_thread(log.read_text, errors="replace")
            ending = "\n".join(text.splitlines()[-20:])
            raise RuntimeError(f"{error}; the end of its log:\n{ending}") from None
        yield worker
    finally:
        if worker.returncode is None:
            worker.terminate()
            try:
                await asyncio.wait_for(worker.wait(), 30)
            except TimeoutError:
                worker.kill()
                await worker.wait()


@contextlib.asynccontextmanager
async def profiled(pid: int, directory: Path | None, name: str) -> AsyncIterator[None]:
    """py-spy sampling the worker ``pid`` meanwhile (its collapsed stacks in ``directory``)."""
    if directory is None:
        yield
        return
    await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
    spy = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "py-spy"),
        "record",
        "--pid",
        str(pid),
        "--rate",
        "250",
        # Only the thread holding the GIL: the worker's Python (and C called with the GIL).
        "--gil",
        "--format",
        "raw",
        "--output",
        str(directory / f"{name}.txt"),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    await asyncio.sleep(1.0)  # attached
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)
        await spy.wait()


@dataclass
class Figures:
    raw_rate: float
    sync_rate: float
    # CPU seconds per 100,000 rows: of the raw copy (the benchmark's process) and of the
    # sync's worker (its process and its read-ahead process, every thread): less noisy than
    # wall-clock on a shared machine.
    raw_cpu: float
    sync_cpu: float
    # CPU seconds per 100,000 rows of the whole machine (every process: servers too) during
    # each: against the cores there are, how near the copy is to what the machine can do.
    raw_machine_cpu: float
    sync_machine_cpu: float
    # None: no peer for this target.
    peer_rate: float | None
    peak_rss_mib: float
    # Seconds per activity type, summed over the run: (running on the worker, queued before).
    steps: dict[str, tuple[float, float]]


async def step_seconds(client: Client, workflow_id: str) -> dict[str, tuple[float, float]]:
    """Where a sync's time went, from the histories of all its runs (continue-as-new): per
    activity type, and for the workflow tasks that decide the next step."""
    totals: dict[str, list[float]] = {}
    async for run in client.list_workflows(f"WorkflowId = '{workflow_id}'"):
        history = await client.get_workflow_handle(workflow_id, run_id=run.run_id).fetch_history()
        scheduled: dict[int, tuple[str, datetime]] = {}
        started: dict[int, datetime] = {}
        for event in history.events:
            at = event.event_time.ToDatetime()
            if event.HasField("activity_task_scheduled_event_attributes"):
                name = event.activity_task_scheduled_event_attributes.activity_type.name
                scheduled[event.event_id] = (name, at)
            elif event.HasField("activity_task_started_event_attributes"):
                started[event.activity_task_started_event_attributes.scheduled_event_id] = at
            elif event.HasField("workflow_task_scheduled_event_attributes"):
                scheduled[event.event_id] = ("(workflow tasks)", at)
            elif event.HasField("workflow_task_started_event_attributes"):
                started[event.workflow_task_started_event_attributes.scheduled_event_id] = at
            elif event.HasField("workflow_task_completed_event_attributes"):
                key = event.workflow_task_completed_event_attributes.scheduled_event_id
                name, queued_at = scheduled[key]
                running, queued = totals.setdefault(name, [0.0, 0.0])
                totals[name] = [
                    running + (at - started[key]).total_seconds(),
                    queued + (started[key] - queued_at).total_seconds(),
                ]
            elif event.HasField("activity_task_completed_event_attributes"):
                key = event.activity_task_completed_event_attributes.scheduled_event_id
                name, queued_at = scheduled[key]
                running, queued = totals.setdefault(name, [0.0, 0.0])
                totals[name] = [
                    running + (at - started[key]).total_seconds(),
                    queued + (started[key] - queued_at).total_seconds(),
                ]
    return {name: (running, queued) for name, (running, queued) in totals.items()}


@dataclass
class Bench:
    client: Client
    temporal_address: str
    data: Path
    admin_url: str
    batch_size: int
    # Rows per step of the sync (its batch); the raw copy reads and writes ``batch_size``.
    sync_batch_size: int
    mongodb_url: str | None
    cosmosdb_endpoint: str | None
    supabase: SupabaseStack | None
    # A directory for py-spy's profile of each sync's worker (collapsed stacks), or None.
    profile: Path | None = None

    def target_settings(self, target: str, rows: int, target_url: str | None) -> dict[str, str]:
        if target == "sqlite":
            return {"ENABLE_SQLITE": "true", "SQLITE_PATH": str(self.data / f"sync-{rows}.db")}
        if target == "postgres":
            # The worker's PostgreSQL is the source: the target, another database of the same
            # server, is the SQL provider of the "sqlserver" slot, any SQLAlchemy URL.
            assert target_url is not None
            return {
                "ENABLE_SQLITE": "false",
                "ENABLE_SQLSERVER": "true",
                "SQLSERVER_URL": target_url.replace("postgresql://", "postgresql+asyncpg://", 1),
            }
        if target == "cosmosdb":
            assert self.cosmosdb_endpoint is not None
            return {
                "ENABLE_SQLITE": "false",
                "ENABLE_COSMOSDB": "true",
                "COSMOSDB_ENDPOINT": self.cosmosdb_endpoint,
                "COSMOSDB_KEY": EMULATOR_KEY.get_secret_value(),
                "COSMOSDB_DATABASE": f"bench_sync_{rows}",
                "COSMOSDB_VERIFY_TLS": "false",
            }
        if target == "supabase":
            assert self.supabase is not None
            return {
                "ENABLE_SQLITE": "false",
                "ENABLE_SUPABASE": "true",
                "SUPABASE_URL": self.supabase.url,
                "SUPABASE_SERVICE_ROLE_KEY": self.supabase.service_role_key,
                "SUPABASE_TABLE": self.supabase.table,
            }
        assert self.mongodb_url is not None
        return {
            "ENABLE_SQLITE": "false",
            "ENABLE_MONGODB": "true",
            "MONGODB_URL": self.mongodb_url,
            "MONGODB_DATABASE": f"bench_sync_{rows}",
        }

    def raw_sink(
        self, target: str, rows: int, target_url: str | None
    ) -> contextlib.AbstractAsyncContextManager[RawWrite]:
        if target == "sqlite":
            return sqlite_sink(self.data / f"raw-{rows}.db")
        if target == "postgres":
            assert target_url is not None
            return postgres_sink(target_url)
        if target == "cosmosdb":
            assert self.cosmosdb_endpoint is not None
            return cosmosdb_sink(self.cosmosdb_endpoint, f"bench_raw_{rows}", f"bench_{target}")
        if target == "supabase":
            assert self.supabase is not None
            return supabase_sink(self.supabase, f"bench_raw_{rows}", f"bench_{target}")
        assert self.mongodb_url is not None
        return mongodb_sink(self.mongodb_url, f"bench_raw_{rows}")

    async def sync(
        self, postgres_url: str, target: str, rows: int, target_url: str | None
    ) -> tuple[float, float, float, float, dict[str, tuple[float, float]]]:
        """Rows per second of a full sync to ``target``, the CPU seconds of the worker (and its
        read-ahead process) and of the machine, their peak RSS in MiB, and the seconds spent
        in each step."""
        dataset, task_queue = f"bench_{target}", f"bench-sync-{target}-{rows}"
        dataset_config = {
            "name": dataset,
            "source": {"provider": "postgres", "table": TABLE},
            "targets": [PROVIDERS[target]],
            "schema": "benchmarks.sync_item:SyncItem",
        }
        environment = worker_environment(
            {
                "ENABLE_TEMPORAL": "true",
                "TEMPORAL_SERVER_URL": self.temporal_address,
                "TEMPORAL_TASK_QUEUE": task_queue,
                "DATA_DIR": str(self.data),
                "ENABLE_POSTGRES": "true",
                "POSTGRES_URL": postgres_url,
                "SYNC_DATASETS": json.dumps([dataset_config]),
                "SYNC_BATCH_SIZE": str(self.sync_batch_size),
                "METRICS_BIND_ADDRESS": "off",
                **self.target_settings(target, rows, target_url),
            }
        )
        log = self.data / f"worker-{target}-{rows}.log"
        async with running_worker(self.client, environment, task_queue, log) as worker:
            async with profiled(worker.pid, self.profile, f"{target}-{rows}"):
                began, cpu = time.perf_counter(), cpu_seconds(worker.pid)
                machine = machine_cpu_seconds()
                threads = thread_cpu_seconds(worker.pid)
                result = await self.client.execute_workflow(
                    DataSyncWorkflow.run,
                    SyncInput(dataset=dataset),
                    id=sync_workflow_id(dataset),
                    task_queue=task_queue,
                )
                elapsed = time.perf_counter() - began
                cpu = cpu_seconds(worker.pid) - cpu
                machine = machine_cpu_seconds() - machine
                if self.profile is not None:
                    spent = {
                        name: seconds - threads.get(name, 0.0)
                        for name, seconds in thread_cpu_seconds(worker.pid).items()
                    }
                    top = sorted(spent.items(), key=lambda item: -item[1])[:8]
                    print(
                        f"worker CPU s by thread ({target}, {rows}):",
                        ", ".join(f"{name} {seconds:.2f}" for name, seconds in top),
                        flush=True,
                    )
            peak = peak_rss_mib(worker.pid)
        if result.status is not SyncStatus.COMPLETED or result.progress.rows_synced != rows:
            raise RuntimeError(f"the sync to {target} did not sync {rows} rows: {result}")
        steps = await step_seconds(self.client, sync_workflow_id(dataset))
        return rows / elapsed, cpu, machine, peak, steps

    async def measure(self, target: str, rows: int, postgres_url: str) -> Figures:
        async with AsyncExitStack() as stack:
            urls: dict[str, str | None] = {"raw": None, "sync": None}
            peer_url: str | None = f"sqlite:///{self.data / f'peer-{rows}.db'}"
            if target == "postgres":
                for name in urls:
                    urls[name] = await stack.enter_async_context(fresh_database(self.admin_url))
                peer_url = await stack.enter_async_context(fresh_database(self.admin_url))
            elif target != "sqlite":
                peer_url = None  # dlt has no MongoDB, Cosmos DB or PostgREST destination
            if target == "supabase":
                # One records table for every size: each sync starts from an empty one, as each
                # size's MongoDB or Cosmos DB database is new.
                assert self.supabase is not None
                await empty_records(self.supabase)
            async with self.raw_sink(target, rows, urls["raw"]) as write:
                raw_rate, raw_cpu, raw_machine = await raw_copy(
                    postgres_url, self.batch_size, write
                )
            sync_rate, sync_cpu, sync_machine, peak, steps = await self.sync(
                postgres_url, target, rows, urls["sync"]
            )
            peer_rate = None
            if peer_url is not None:
                peer_rate = await asyncio.to_thread(
                    peer_load, postgres_url, rows, peer_url, self.data / "dlt", self.batch_size
                )
        per = 100_000 / rows
        return Figures(
            raw_rate,
            sync_rate,
            raw_cpu * per,
            sync_cpu * per,
            raw_machine * per,
            sync_machine * per,
            peer_rate,
            peak,
            steps,
        )


def load() -> str:
    return ", ".join(f"{value:.2f}" for value in os.getloadavg())


def report(
    results: dict[tuple[str, int], Figures], batch_size: int, sync_batch_size: int, loads: list[str]
) -> None:
    print(
        f"PostgreSQL source, raw copy batch size {batch_size}, sync batch size {sync_batch_size};"
        " one dev server, one worker process"
    )
    print(f"load average (1, 5, 15 min): before {loads[0]}; after {loads[1]}")
    header = f"{'target':8} {'rows':>9} {'raw rows/s':>11} {'sync rows/s':>12}"
    print(
        f"{header} {'peer rows/s':>12} {'sync/raw':>9} {'worker peak RSS MiB':>20}"
        f" {'CPU s/100k raw':>15} {'sync':>6} {'machine raw':>12} {'sync':>6}"
    )
    for (target, rows), figures in results.items():
        ratio = figures.sync_rate / figures.raw_rate
        peer = "-" if figures.peer_rate is None else f"{figures.peer_rate:.0f}"
        print(
            f"{target:8} {rows:>9} {figures.raw_rate:11.0f} {figures.sync_rate:12.0f}"
            f" {peer:>12} {ratio:9.2f} {figures.peak_rss_mib:20.1f}"
            f" {figures.raw_cpu:15.2f} {figures.sync_cpu:6.2f}"
            f" {figures.raw_machine_cpu:12.2f} {figures.sync_machine_cpu:6.2f}",
            flush=True,
        )
    print("seconds in each step of the sync (running on the worker / queued before it ran):")
    for (target, rows), figures in results.items():
        steps = ", ".join(
            f"{name} {running:.1f}/{queued:.1f}"
            for name, (running, queued) in figures.steps.items()
        )
        print(f"  {target} {rows}: {steps}")
    sizes = sorted({rows for _, rows in results})
    if len(sizes) > 1:
        print(f"worker peak RSS, {sizes[-1]} rows over {sizes[0]} rows (target ~1):")
        for target in dict.fromkeys(target for target, _ in results):
            largest, smallest = results[target, sizes[-1]], results[target, sizes[0]]
            print(f"  {target}: {largest.peak_rss_mib / smallest.peak_rss_mib:.2f}")


async def main(
    sizes: list[int],
    targets: list[str],
    batch_size: int,
    sync_batch_size: int,
    profile: Path | None = None,
) -> None:
    loads = [load()]
    async with AsyncExitStack() as stack:
        data = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="nexpo-sync-bench-")))
        server = await start_dev_server(
            host="127.0.0.1", port=free_port(), log_path=data / "temporal.log"
        )
        stack.push_async_callback(server.stop)
        mongodb_url = (
            await stack.enter_async_context(running_mongodb()) if "mongodb" in targets else None
        )
        cosmosdb_endpoint = (
            await stack.enter_async_context(running_cosmosdb()) if "cosmosdb" in targets else None
        )
        supabase = (
            await stack.enter_async_context(running_supabase()) if "supabase" in targets else None
        )
        client = await connect(
            Settings(_env_file=None, enable_temporal=True, temporal_server_url=server.address)
        )
        # At wal_level=logical: the sync copies the table, then reads the log.
        admin_url = await stack.enter_async_context(logical_server())
        bench = Bench(
            client,
            server.address,
            data,
            admin_url,
            batch_size,
            sync_batch_size,
            mongodb_url,
            cosmosdb_endpoint,
            supabase,
            profile,
        )
        results: dict[tuple[str, int], Figures] = {}
        for rows in sizes:
            async with fresh_database(admin_url) as postgres_url:
                await fill_source(postgres_url, rows)
                for target in targets:
                    results[target, rows] = await bench.measure(target, rows, postgres_url)
    loads.append(load())
    report(results, batch_size, sync_batch_size, loads)


def numbers(text: str) -> list[int]:
    return [int(part) for part in text.split(",")]


def names(text: str) -> list[str]:
    chosen = text.split(",")
    unknown = set(chosen) - set(PROVIDERS)
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown targets {sorted(unknown)}: {', '.join(PROVIDERS)}"
        )
    return chosen


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=numbers, default=[100_000, 1_000_000])
    parser.add_argument("--targets", type=names, default=["sqlite", "postgres", "mongodb"])
    parser.add_argument("--batch-size", type=int, default=5000)
    parser.add_argument(
        "--sync-batch-size",
        type=int,
        default=None,
        help="rows per step of the sync (default: --batch-size)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="a directory for py-spy's collapsed stacks of each sync's worker",
    )
    arguments = parser.parse_args()
    asyncio.run(
        main(
            arguments.rows,
            arguments.targets,
            arguments.batch_size,
            arguments.sync_batch_size or arguments.batch_size,
            arguments.profile,
        )
    )
