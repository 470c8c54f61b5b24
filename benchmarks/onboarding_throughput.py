"""Onboarding saga throughput against a bare workflow with as many no-op activities.

Run from the repository root (after `bash scripts/test.sh` has installed everything):

    .venv/bin/python -m benchmarks.onboarding_throughput [--workflows 200] [--concurrency 50]

Everything runs on one machine in one run: an in-memory Temporal dev server (the same
low-latency settings as `nexpo-workflows dev`), the real database servers of the test suite
(PostgreSQL, SecantusDB for MongoDB, the Cosmos DB emulator, PostgREST for Supabase, SQLite),
and one in-process worker. For 1, 3 and 5 providers and both step modes it prints
onboardings per second and p50/p95 latency of the saga on the real databases
(``saga-real``) and on in-memory stores (``saga-memory``: the orchestration alone, as the
database servers share the same cores), next to the bare workflow's, and the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from temporalio.client import Client
from tests.servers.cosmosdb import EMULATOR_KEY, running_cosmosdb
from tests.servers.mongodb import running_mongodb
from tests.servers.postgres import fresh_database
from tests.servers.supabase import running_supabase

from benchmarks.bare import BareInput, BareWorkflow, bench_noop
from benchmarks.memory_provider import MemoryProvider
from nexpo_workflows.client import connect
from nexpo_workflows.config import Settings
from nexpo_workflows.devserver import start_dev_server
from nexpo_workflows.ports import free_port
from nexpo_workflows.services import Services
from nexpo_workflows.users.models import OnboardingInput, SagaOptions, StepMode
from nexpo_workflows.users.workflows import UserOnboardingWorkflow
from nexpo_workflows.worker import build_worker

PROVIDER_SETS = {
    1: ["postgres"],
    3: ["postgres", "mongodb", "sqlite"],
    5: ["postgres", "mongodb", "cosmosdb", "supabase", "sqlite"],
}
MEMORY_QUEUE = "bench-memory"
HASH = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo"


async def measure(
    start_one: Callable[[], Awaitable[Any]], count: int, concurrency: int
) -> tuple[float, float, float]:
    """(workflows per second, p50 ms, p95 ms) of ``count`` runs, ``concurrency`` at a time."""
    latencies: list[float] = []
    gate = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with gate:
            started = time.perf_counter()
            await start_one()
            latencies.append((time.perf_counter() - started) * 1000)

    began = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(count)))
    elapsed = time.perf_counter() - began
    quantiles = statistics.quantiles(latencies, n=100)
    return count / elapsed, quantiles[49], quantiles[94]


def saga_runner(
    client: Client, task_queue: str, providers: list[str], mode: StepMode
) -> Callable[[], Awaitable[None]]:
    async def run() -> None:
        await client.execute_workflow(
            UserOnboardingWorkflow.run,
            OnboardingInput(
                email=f"bench.{uuid.uuid4().hex}@example.com",
                name="Bench Mark",
                password_hash=HASH,
                options=SagaOptions(providers=providers, step_mode=mode),
            ),
            id=f"bench-saga-{uuid.uuid4()}",
            task_queue=task_queue,
        )

    return run


def bare_runner(
    client: Client, task_queue: str, activities: int, mode: StepMode
) -> Callable[[], Awaitable[None]]:
    async def run() -> None:
        await client.execute_workflow(
            BareWorkflow.run,
            BareInput(activities=activities, local=mode is StepMode.LOCAL),
            id=f"bench-bare-{uuid.uuid4()}",
            task_queue=task_queue,
        )

    return run


async def main(workflows: int, concurrency: int) -> None:
    async with AsyncExitStack() as stack:
        data = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="nexpo-bench-")))
        server = await start_dev_server(
            host="127.0.0.1", port=free_port(), log_path=data / "temporal.log"
        )
        stack.push_async_callback(server.stop)
        postgres_url = await stack.enter_async_context(fresh_database())
        mongodb_url = await stack.enter_async_context(running_mongodb())
        cosmos_endpoint = await stack.enter_async_context(running_cosmosdb())
        supabase = await stack.enter_async_context(running_supabase())
        settings = Settings(
            _env_file=None,
            enable_temporal=True,
            temporal_server_url=server.address,
            temporal_task_queue="bench",
            data_dir=data,
            metrics_bind_address="",
            enable_postgres=True,
            postgres_url=postgres_url,
            postgres_pool_size=concurrency,
            enable_mongodb=True,
            mongodb_url=mongodb_url,
            enable_cosmosdb=True,
            cosmosdb_endpoint=cosmos_endpoint,
            cosmosdb_key=EMULATOR_KEY,
            cosmosdb_verify_tls=False,
            enable_supabase=True,
            supabase_url=supabase.url,
            supabase_service_role_key=supabase.service_role_key,
            supabase_table=supabase.table,
            enable_sqlite=True,
        )
        client = await connect(settings)
        services = Services.from_settings(settings, client)
        stack.push_async_callback(services.close)
        worker = build_worker(
            client, services, extra_workflows=[BareWorkflow], extra_activities=[bench_noop]
        )
        await stack.enter_async_context(worker)
        # The same saga over in-memory stores, on a queue of its own: orchestration alone.
        memory = Services(
            settings=settings,
            client=client,
            providers={name: MemoryProvider() for name in PROVIDER_SETS[5]},
        )
        await stack.enter_async_context(build_worker(client, memory, task_queue=MEMORY_QUEUE))

        queue = settings.temporal_task_queue
        results: dict[tuple[StepMode, int, str], tuple[float, float, float]] = {}
        for mode in StepMode:
            for count, providers in PROVIDER_SETS.items():
                saga = saga_runner(client, queue, providers, mode)
                await measure(saga, concurrency, concurrency)  # warm connections and caches
                in_memory = saga_runner(client, MEMORY_QUEUE, providers, mode)
                await measure(in_memory, concurrency, concurrency)
                results[mode, count, "bare"] = await measure(
                    bare_runner(client, queue, count, mode), workflows, concurrency
                )
                results[mode, count, "saga-memory"] = await measure(
                    in_memory, workflows, concurrency
                )
                results[mode, count, "saga-real"] = await measure(saga, workflows, concurrency)

        print(f"{workflows} workflows per row, {concurrency} at a time; one dev server, one worker")
        print(f"{'mode':9} {'providers':>9} {'kind':11} {'wf/s':>7} {'p50 ms':>8} {'p95 ms':>8}")
        for (mode, count, kind), (rate, p50, p95) in results.items():
            print(f"{mode:9} {count:>9} {kind:11} {rate:7.1f} {p50:8.1f} {p95:8.1f}")
        print("rate ratios against the activity-mode bare workflow (target: activity saga >= 0.9)")
        for count in PROVIDER_SETS:
            bare = results[StepMode.ACTIVITY, count, "bare"][0]
            cells = [
                f"{mode} {kind} {results[mode, count, kind][0] / bare:.2f}"
                for mode in StepMode
                for kind in ("bare", "saga-memory", "saga-real")
            ]
            print(f"  {count} providers: " + ", ".join(cells))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workflows", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=50)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.workflows, arguments.concurrency))
