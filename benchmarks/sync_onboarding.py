"""Synchronous onboarding (``POST /api/users?wait=true``) against the same saga awaited by polling.

Run from the repository root (after `bash scripts/test.sh` has installed everything):

    PYTHONPATH=src .venv/bin/python -m benchmarks.sync_onboarding [--requests 50] [--load 20]

One process runs what `nexpo-workflows dev` runs: a Temporal dev server (its low-latency
settings, a SQLite file in WAL mode), a worker and the gateway over HTTP on one client. It does
so twice on the same dev server, each on a task queue of its own: with 1 provider (PostgreSQL)
and with 5 (PostgreSQL, MongoDB on SecantusDB, the Cosmos DB emulator, Supabase on PostgREST,
SQLite), the real servers of the test suite. For each, at idle and under load (``--load``
onboardings kept running at once on the same worker and databases, started on Temporal
directly), it sends ``--requests`` onboardings one after another and prints p50/p95 of:

- ``wait``: ``POST /api/users?wait=true``, answered 201 with the user;
- ``poll``: ``POST /api/users`` (202), ``GET`` its ``statusUrl`` every ``--poll-interval``
  seconds until the saga completed, then ``GET /api/users/{id}``: the same answer;
- ``update-with-start`` and ``eager start+result`` (what ``wait`` does): the saga awaited on
  Temporal alone, without HTTP or the password's hash (a fixed Argon2id string, as in
  onboarding_throughput);
- ``argon2id``: hashing the password, which every ``POST`` does before it starts the saga.

"Idle" is this benchmark's own idleness: the machine's load average is printed with it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr
from temporalio.client import Client, WithStartWorkflowOperation
from temporalio.common import WorkflowIDConflictPolicy
from tests.servers.cosmosdb import EMULATOR_KEY, running_cosmosdb
from tests.servers.mongodb import running_mongodb
from tests.servers.postgres import fresh_database
from tests.servers.supabase import running_supabase

from nexpo_workflows import eventloop
from nexpo_workflows.api.app import create_app, embedded_server
from nexpo_workflows.api.auth import hash_api_key, new_api_key
from nexpo_workflows.api.deps import GatewayState
from nexpo_workflows.client import connect
from nexpo_workflows.config import Settings
from nexpo_workflows.devserver import start_dev_server
from nexpo_workflows.ports import free_port
from nexpo_workflows.services import Services
from nexpo_workflows.users.models import OnboardingInput, SagaResult
from nexpo_workflows.users.passwords import PasswordHashing
from nexpo_workflows.users.workflows import OUTCOME_WHEN_FINISHED, UserOnboardingWorkflow
from nexpo_workflows.worker import build_worker

HASH = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo"
PASSWORD = "bench-password-1234"
WARM_UP = 5


@dataclass
class Stack:
    """One gateway and its worker on a task queue of their own."""

    providers: int
    task_queue: str
    http: httpx.AsyncClient
    # The gateway's own hashing: the Argon2id parameters and threads it is configured with.
    passwords: PasswordHashing


def provider_settings(servers: dict[str, Any], count: int) -> dict[str, Any]:
    postgres = {"enable_postgres": True, "postgres_url": servers["postgres_url"]}
    if count == 1:
        return {**postgres, "enable_sqlite": False}
    supabase = servers["supabase"]
    return {
        **postgres,
        "enable_mongodb": True,
        "mongodb_url": servers["mongodb_url"],
        "enable_cosmosdb": True,
        "cosmosdb_endpoint": servers["cosmos_endpoint"],
        "cosmosdb_key": EMULATOR_KEY,
        "cosmosdb_verify_tls": False,
        "enable_supabase": True,
        "supabase_url": supabase.url,
        "supabase_service_role_key": supabase.service_role_key,
        "supabase_table": supabase.table,
        "enable_sqlite": True,
    }


@asynccontextmanager
async def running_stack(
    client: Client, settings: Settings, api_key: str, providers: int
) -> AsyncIterator[Stack]:
    """The dev stack's worker and gateway (over real HTTP) for ``settings``."""
    services = Services.from_settings(settings, client)
    app = create_app(GatewayState(services, client, metrics_url=None))
    server = embedded_server(app, "127.0.0.1", settings.api_port, "warning")
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if serving.done():
                serving.result()
            await asyncio.sleep(0.02)
        async with (
            build_worker(client, services),
            httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{settings.api_port}",
                headers={"X-API-Key": api_key},
                timeout=60,
            ) as http,
        ):
            yield Stack(providers, settings.temporal_task_queue, http, services.passwords)
    finally:
        server.should_exit = True
        await serving
        await services.close()


def new_body() -> dict[str, str]:
    return {
        "email": f"bench.{uuid.uuid4().hex}@example.com",
        "name": "Bench Mark",
        "password": PASSWORD,
    }


def prehashed() -> OnboardingInput:
    return OnboardingInput(
        email=f"bench.{uuid.uuid4().hex}@example.com", name="Bench Mark", password_hash=HASH
    )


def variants(
    client: Client, stack: Stack, poll_interval: float
) -> dict[str, Callable[[], Awaitable[None]]]:
    async def wait() -> None:
        response = await stack.http.post("/api/users", json=new_body(), params={"wait": "true"})
        assert response.status_code == 201, response.text

    async def poll() -> None:
        accepted = await stack.http.post("/api/users", json=new_body())
        assert accepted.status_code == 202, accepted.text
        status_url = accepted.json()["statusUrl"]
        while True:
            status = (await stack.http.get(status_url)).json()
            if status["status"] != "running":
                break
            await asyncio.sleep(poll_interval)
        assert status["status"] == "completed", status
        user = await stack.http.get(f"/api/users/{status['result']['user_id']}")
        assert user.status_code == 200, user.text

    async def update_with_start() -> None:
        operation = WithStartWorkflowOperation(
            UserOnboardingWorkflow.run,
            prehashed(),
            id=f"bench-uws-{uuid.uuid4()}",
            task_queue=stack.task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
        )
        result: SagaResult = await client.execute_update_with_start_workflow(
            OUTCOME_WHEN_FINISHED, start_workflow_operation=operation, result_type=SagaResult
        )
        assert result.status == "completed", result

    async def start_and_result() -> None:
        handle = await client.start_workflow(
            UserOnboardingWorkflow.run,
            prehashed(),
            id=f"bench-start-{uuid.uuid4()}",
            task_queue=stack.task_queue,
            request_eager_start=True,
        )
        await handle.result()

    async def argon2id() -> None:
        await stack.passwords.hash(SecretStr(PASSWORD))

    return {
        "wait": wait,
        "poll": poll,
        "update-with-start": update_with_start,
        "eager start+result": start_and_result,
        "argon2id": argon2id,
    }


async def latencies(one: Callable[[], Awaitable[None]], count: int) -> tuple[float, float]:
    """p50 and p95 in ms of ``count`` calls made one after another."""
    for _ in range(WARM_UP):
        await one()
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        await one()
        samples.append((time.perf_counter() - started) * 1000)
    quantiles = statistics.quantiles(samples, n=100)
    return quantiles[49], quantiles[94]


@asynccontextmanager
async def background_load(client: Client, task_queue: str, sagas: int) -> AsyncIterator[None]:
    """``sagas`` onboardings running at all times on ``task_queue``."""
    stop = asyncio.Event()

    async def keep_one_running() -> None:
        while not stop.is_set():
            await client.execute_workflow(
                UserOnboardingWorkflow.run,
                prehashed(),
                id=f"bench-load-{uuid.uuid4()}",
                task_queue=task_queue,
            )

    runners = [asyncio.create_task(keep_one_running()) for _ in range(sagas)]
    await asyncio.sleep(2)  # let it reach its steady state
    try:
        yield
    finally:
        stop.set()
        await asyncio.gather(*runners)


async def main(
    requests: int, load: int, poll_interval: float, provider_counts: list[int], step_mode: str
) -> None:
    api_key = new_api_key()
    async with AsyncExitStack() as stack:
        data = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="nexpo-bench-")))
        server = await start_dev_server(
            host="127.0.0.1",
            port=free_port(),
            log_path=data / "temporal.log",
            db_file=data / "temporal.db",
        )
        stack.push_async_callback(server.stop)
        servers = {
            "postgres_url": await stack.enter_async_context(fresh_database()),
            "mongodb_url": await stack.enter_async_context(running_mongodb()),
            "cosmos_endpoint": await stack.enter_async_context(running_cosmosdb()),
            "supabase": await stack.enter_async_context(running_supabase()),
        }
        common: dict[str, Any] = {
            "enable_temporal": True,
            "temporal_server_url": server.address,
            "metrics_bind_address": "",
            "api_key_hashes": [hash_api_key(api_key)],
            "postgres_pool_size": load + 5,
            "onboarding_step_mode": step_mode,
        }
        client = await connect(Settings(_env_file=None, **common))
        print(
            f"{requests} requests per row, one at a time; one dev server (file, WAL), one worker "
            f"and the gateway in one process; ONBOARDING_STEP_MODE={step_mode}; the machine's "
            "1-minute load average after each row"
        )
        print(
            f"{'providers':>9} {'condition':10} {'variant':19} {'p50 ms':>8} {'p95 ms':>8} "
            f"{'loadavg':>7}",
            flush=True,
        )
        for providers in provider_counts:
            settings = Settings(
                _env_file=None,
                **common,
                **provider_settings(servers, providers),
                temporal_task_queue=f"bench-{providers}",
                data_dir=data / f"stack-{providers}",
                api_port=free_port(),
            )
            async with running_stack(client, settings, api_key, providers) as gateway:
                probes = variants(client, gateway, poll_interval)
                for condition in ("idle", f"load {load}") if load else ("idle",):
                    async with AsyncExitStack() as loaded:
                        if condition != "idle":
                            await loaded.enter_async_context(
                                background_load(client, gateway.task_queue, load)
                            )
                        for name, probe in probes.items():
                            p50, p95 = await latencies(probe, requests)
                            print(
                                f"{providers:>9} {condition:10} {name:19} {p50:8.1f} {p95:8.1f} "
                                f"{os.getloadavg()[0]:7.1f}",
                                flush=True,
                            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument(
        "--load", type=int, default=20, help="sagas kept running at once; 0: idle only"
    )
    parser.add_argument("--poll-interval", type=float, default=0.05, help="seconds")
    parser.add_argument(
        "--providers",
        type=int,
        action="append",
        choices=(1, 5),
        help="Measure only these numbers of providers (repeatable); 1 and 5 by default.",
    )
    parser.add_argument(
        "--step-mode",
        choices=("activity", "local"),
        default="activity",
        help="ONBOARDING_STEP_MODE of the worker: each step a (local) activity",
    )
    arguments = parser.parse_args()
    # The loop `nexpo-workflows dev` runs on.
    eventloop.run(
        main(
            arguments.requests,
            arguments.load,
            arguments.poll_interval,
            arguments.providers or [1, 5],
            arguments.step_mode,
        )
    )
