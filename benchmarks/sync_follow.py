"""Follow mode's lag: a steady stream of changes into the source, and how long each takes
from its commit to verified in the targets.

Run from the repository root (after `bash scripts/test.sh` has installed everything):

    PYTHONPATH=src .venv/bin/python -m benchmarks.sync_follow \
        [--rate 1000] [--seconds 30] [--targets sqlite,mongodb] [--poll 0.5]

A fresh database on a PostgreSQL server at wal_level=logical holds the table of
``benchmarks/sync_throughput.py``, with enough rows that every update and delete of the stream
hits a row of its own. A follow run of the dataset (``SyncInput(follow=True)``, as
``sync run DATASET --follow`` starts it) runs on an in-memory Temporal dev server, in a
``nexpo-workflows worker`` process of its own; once it has copied the table, one connection
commits a transaction every 20 ms for ``--seconds`` seconds: ``--rate`` changes per second in
all, 60 % inserts of new rows, 30 % updates and 10 % hard deletes, no key changed twice. Each
change is counted by the run (rows synced plus rows deleted) only once its batch is verified
on every target, and the run's progress is read every 50 ms: a change's lag is the time from
its transaction's commit to the first read that counts it (so up to 50 ms late).

Prints the rate reached, the lag's p50, p99 and maximum (goal: p50 <= 2 s, p99 <= 10 s), the
batches and runs (continue-as-new) the stream took, and the load average before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import os
import tempfile
import time
from contextlib import AsyncExitStack
from decimal import Decimal
from pathlib import Path

import asyncpg
from temporalio.client import Client, WorkflowHandle
from tests.servers.mongodb import running_mongodb
from tests.servers.postgres import fresh_database, logical_server

from benchmarks.sync_throughput import (
    CATEGORIES,
    DESCRIPTION,
    START,
    TABLE,
    fill_source,
    load,
    names,
    running_worker,
    worker_environment,
)
from nexpo_workflows.client import connect
from nexpo_workflows.config import Settings
from nexpo_workflows.devserver import start_dev_server
from nexpo_workflows.ports import free_port
from nexpo_workflows.sync.models import SyncInput, SyncPhase, SyncProgress, SyncResult
from nexpo_workflows.sync.workflow import DataSyncWorkflow, sync_workflow_id

TICK_SECONDS = 0.02
PROGRESS_EVERY_SECONDS = 0.05
INSERTS, UPDATES = 0.6, 0.3  # deletes: the rest
DATASET = "bench_follow"


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def progress(handle: WorkflowHandle[DataSyncWorkflow, SyncResult]) -> SyncProgress:
    return await handle.query(DataSyncWorkflow.progress)


def counted(progress: SyncProgress) -> int:
    return progress.rows_synced + progress.rows_deleted


async def stream(
    url: str, rate: int, seconds: float, existing: int
) -> tuple[list[tuple[float, int]], float]:
    """Commit ``rate`` changes per second for ``seconds``; (commit time, changes so far) per
    transaction, and the seconds the stream took."""
    connection = await asyncpg.connect(url)
    commits: list[tuple[float, int]] = []
    done = inserted = touched = 0
    began = time.time()
    ticks = round(seconds / TICK_SECONDS)
    try:
        for tick in range(ticks):
            due = round(rate * TICK_SECONDS * (tick + 1)) - done
            inserts, updates = round(due * INSERTS), round(due * UPDATES)
            deletes = due - inserts - updates
            new = [
                (
                    f"new-{inserted + n:08d}",
                    "streamed",
                    Decimal("1.50"),
                    DESCRIPTION,
                    CATEGORIES[n % len(CATEGORIES)],
                    START,
                    False,
                )
                for n in range(inserts)
            ]
            # Rows of the initial copy, each changed once; none of them a tombstone already.
            keys = [f"item-{existing - 1 - touched - n:08d}" for n in range(updates + deletes)]
            async with connection.transaction():
                if new:
                    await connection.copy_records_to_table(TABLE, records=new)
                if updates:
                    await connection.execute(
                        f"UPDATE {TABLE} SET name = 'updated', updated_at = now()"
                        " WHERE id = ANY($1)",
                        keys[:updates],
                    )
                if deletes:
                    await connection.execute(
                        f"DELETE FROM {TABLE} WHERE id = ANY($1)", keys[updates:]
                    )
            inserted += inserts
            touched += updates + deletes
            done += due
            commits.append((time.time(), done))
            pause = began + TICK_SECONDS * (tick + 1) - time.time()
            if pause > 0:
                await asyncio.sleep(pause)
    finally:
        await connection.close()
    return commits, time.time() - began


async def watch(
    handle: WorkflowHandle[DataSyncWorkflow, SyncResult], base: int, changes: int
) -> list[tuple[float, int]]:
    """(time, changes verified since ``base``) every PROGRESS_EVERY_SECONDS until all
    ``changes`` are."""
    seen: list[tuple[float, int]] = []
    while not seen or seen[-1][1] < changes:
        seen.append((time.time(), counted(await progress(handle)) - base))
        await asyncio.sleep(PROGRESS_EVERY_SECONDS)
    return seen


def lags(commits: list[tuple[float, int]], seen: list[tuple[float, int]]) -> list[float]:
    """Per change: seconds from its commit to the first read that counted it."""
    counts = [count for _, count in seen]
    found: list[float] = []
    previous = 0
    for committed, total in commits:
        index = bisect.bisect_left(counts, total)
        if index == len(counts):
            raise RuntimeError(f"{total} changes were committed, {counts[-1]} verified")
        found += [max(seen[index][0] - committed, 0.0)] * (total - previous)
        previous = total
    return found


async def main(rate: int, seconds: float, targets: list[str], poll: float) -> None:
    loads = [load()]
    changes = round(rate * seconds)
    # Enough rows for every update and delete to change a row of its own, and some more.
    existing = max(1000, round(changes * (1 - INSERTS)) + 1000)
    async with AsyncExitStack() as stack:
        data = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="nexpo-follow-")))
        server = await start_dev_server(
            host="127.0.0.1", port=free_port(), log_path=data / "temporal.log"
        )
        stack.push_async_callback(server.stop)
        client: Client = await connect(
            Settings(_env_file=None, enable_temporal=True, temporal_server_url=server.address)
        )
        admin_url = await stack.enter_async_context(logical_server())
        postgres_url = await stack.enter_async_context(fresh_database(admin_url))
        await fill_source(postgres_url, existing)
        # The stream's updates and deletes take the last keys: no tombstones among them.
        await asyncpg_execute(postgres_url, f"UPDATE {TABLE} SET deleted = false")
        values = {
            "ENABLE_TEMPORAL": "true",
            "TEMPORAL_SERVER_URL": server.address,
            "TEMPORAL_TASK_QUEUE": "bench-follow",
            "DATA_DIR": str(data),
            "ENABLE_POSTGRES": "true",
            "POSTGRES_URL": postgres_url,
            "SYNC_DATASETS": json.dumps(
                [
                    {
                        "name": DATASET,
                        "source": {"provider": "postgres", "table": TABLE},
                        "targets": targets,
                        "schema": "benchmarks.sync_item:SyncItem",
                    }
                ]
            ),
            "SYNC_FOLLOW_POLL_SECONDS": str(poll),
            "METRICS_BIND_ADDRESS": "off",
            "ENABLE_SQLITE": "true" if "sqlite" in targets else "false",
            "SQLITE_PATH": str(data / "follow.db"),
        }
        if "mongodb" in targets:
            values |= {
                "ENABLE_MONGODB": "true",
                "MONGODB_URL": await stack.enter_async_context(running_mongodb()),
                "MONGODB_DATABASE": "bench_follow",
            }
        environment = worker_environment(values)
        async with running_worker(client, environment, "bench-follow", data / "worker.log"):
            handle = await client.start_workflow(
                DataSyncWorkflow.run,
                SyncInput(dataset=DATASET, follow=True),
                id=sync_workflow_id(DATASET),
                task_queue="bench-follow",
            )
            handle = client.get_workflow_handle_for(DataSyncWorkflow.run, handle.id)
            began = time.time()
            while True:  # the copy of the table first
                copied = await progress(handle)
                if copied.phase is SyncPhase.WAITING and counted(copied) >= existing:
                    break
                await asyncio.sleep(0.2)
            print(f"copied {existing} rows in {time.time() - began:.1f} s; streaming")
            watcher = asyncio.ensure_future(watch(handle, counted(copied), changes))
            commits, took = await stream(postgres_url, rate, seconds, existing)
            seen = await watcher
            await handle.signal(DataSyncWorkflow.stop)
            result = await handle.result()
    loads.append(load())
    found = lags(commits, seen)
    batches = result.progress.batches - copied.batches
    print(f"targets: {', '.join(targets)}; idle poll {poll} s; one dev server, one worker process")
    print(f"load average (1, 5, 15 min): before {loads[0]}; after {loads[1]}")
    print(
        f"stream: {changes} changes in {took:.1f} s = {changes / took:.0f} changes/s "
        f"(asked {rate}/s), {len(commits)} transactions"
    )
    print(
        f"lag commit -> verified: p50 {percentile(found, 0.5):.2f} s, "
        f"p99 {percentile(found, 0.99):.2f} s, max {max(found):.2f} s "
        "(goal: p50 <= 2 s, p99 <= 10 s)"
    )
    print(
        f"{batches} micro-batches ({changes / max(batches, 1):.0f} changes each), "
        f"{result.progress.runs} runs (continue-as-new), ended {result.status}"
    )


async def asyncpg_execute(url: str, sql: str) -> None:
    connection = await asyncpg.connect(url)
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=1000, help="changes per second")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--targets", type=names, default=["sqlite"])
    parser.add_argument("--poll", type=float, default=0.5, help="SYNC_FOLLOW_POLL_SECONDS")
    arguments = parser.parse_args()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    asyncio.run(main(arguments.rate, arguments.seconds, arguments.targets, arguments.poll))
