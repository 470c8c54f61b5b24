"""The gateway under load: POST /api/users, 50 at a time, against the dev stack.

Run from the repository root (after `bash scripts/test.sh` has installed everything):

    .venv/bin/python -m benchmarks.gateway_load [--requests 300] [--concurrency 50]

For each password hashing configuration below it starts `nexpo-workflows dev` (the embedded
Temporal dev server, one worker and the gateway in one process, SQLite: the dev defaults)
with that configuration's PASSWORD_HASH_* variables, and measures in that one run:

1. the sagas alone: as many onboardings started straight on Temporal with a ready-made hash,
   as many at a time, each awaited to its end; sagas per second is what the gateway has to
   keep up with;
2. the gateway: as many POST /api/users, each answered once (a 503 is counted, not retried):
   the accept rate (202s per second over the phase), p50/p95 latency of the accepted, the
   503s (and whether each carried Retry-After), and that every accepted saga completed.

The configurations: ``before``, the hashing this gateway had (argon2-cffi's defaults, 64 MiB,
t=3, p=4, on asyncio.to_thread's pool of min(32, cores + 4) threads, no bound on the queue);
``owasp-unbounded``, the new default parameters (19 MiB, t=2, p=1) and a thread per core but
no bound; ``owasp``, the new defaults (8 queued per thread).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from argon2 import PasswordHasher
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from nexpo_workflows.config import Settings
from nexpo_workflows.ports import free_port
from nexpo_workflows.users.models import OnboardingInput
from nexpo_workflows.users.passwords import PasswordHashing
from nexpo_workflows.users.service import onboarding_workflow_id
from nexpo_workflows.users.workflows import UserOnboardingWorkflow

CLI = Path(sys.executable).parent / "nexpo-workflows"
TASK_QUEUE = "main-task-queue"
HASHES_TIMED = 10
# No bound: more requests than any run sends.
UNBOUNDED = "100000"
CONFIGURATIONS: dict[str, dict[str, str]] = {
    "before": {
        "PASSWORD_HASH_MEMORY_KIB": "65536",
        "PASSWORD_HASH_TIME_COST": "3",
        "PASSWORD_HASH_PARALLELISM": "4",
        "PASSWORD_HASH_WORKERS": str(min(32, (os.cpu_count() or 1) + 4)),
        "PASSWORD_HASH_QUEUE_LIMIT": UNBOUNDED,
    },
    "owasp-unbounded": {"PASSWORD_HASH_QUEUE_LIMIT": UNBOUNDED},
    "owasp": {},
}


@dataclass
class Row:
    hash_ms: float
    load_average: float
    saga_rate: float
    accepted: int
    refused: int
    refused_without_retry_after: int
    other: int
    accept_rate: float
    p50_ms: float
    p95_ms: float
    completed: int


def percentiles(latencies: list[float]) -> tuple[float, float]:
    if len(latencies) < 2:
        return (latencies[0], latencies[0]) if latencies else (float("nan"), float("nan"))
    quantiles = statistics.quantiles(latencies, n=100)
    return quantiles[49], quantiles[94]


async def in_parallel(count: int, concurrency: int, one: Callable[[int], Awaitable[None]]) -> float:
    """Run ``one(0..count-1)``, ``concurrency`` at a time; the seconds it took."""
    numbers = iter(range(count))

    async def runner() -> None:
        for number in numbers:
            await one(number)

    began = time.perf_counter()
    await asyncio.gather(*(runner() for _ in range(concurrency)))
    return time.perf_counter() - began


@asynccontextmanager
async def dev_stack(variables: dict[str, str]) -> AsyncIterator[tuple[str, str, str]]:
    """`nexpo-workflows dev` with ``variables``: (gateway URL, API key, Temporal address)."""
    with tempfile.TemporaryDirectory(prefix="nexpo-gateway-load-") as data:
        env = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith(("TEMPORAL_", "ENABLE_", "API_", "PASSWORD_HASH_", "METRICS_"))
        }
        temporal = f"127.0.0.1:{free_port()}"
        api_port = free_port()
        env.update(
            DATA_DIR=data,
            TEMPORAL_SERVER_URL=temporal,
            TEMPORAL_UI_PORT=str(free_port()),
            API_PORT=str(api_port),
            METRICS_BIND_ADDRESS="off",
            API_METRICS_BIND_ADDRESS="off",
            PYTHONUNBUFFERED="1",
            **variables,
        )
        process = await asyncio.create_subprocess_exec(
            str(CLI),
            "dev",
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        assert process.stdout is not None
        banner = ""
        async with asyncio.timeout(120):
            while "data " not in (line := (await process.stdout.readline()).decode()):
                if not line:
                    raise RuntimeError(f"the dev stack exited:\n{banner}")
                banner += line
        key = re.search(r"API key\s+(\S+)", banner)
        assert key is not None, banner
        # Its access log goes on: read it so that the stack never blocks on a full pipe.
        draining = asyncio.create_task(process.stdout.read())
        try:
            yield f"http://127.0.0.1:{api_port}", key[1], temporal
        finally:
            process.send_signal(signal.SIGINT)
            await asyncio.wait_for(process.wait(), 60)
            await draining


async def saga_rate(client: Client, password_hash: str, count: int, concurrency: int) -> float:
    async def onboard(_: int) -> None:
        email = f"saga.{uuid.uuid4().hex}@example.com"
        await client.execute_workflow(
            UserOnboardingWorkflow.run,
            OnboardingInput(email=email, name="Saga Bench", password_hash=password_hash),
            id=onboarding_workflow_id(email),
            task_queue=TASK_QUEUE,
        )

    await in_parallel(concurrency, concurrency, onboard)  # warm the worker and SQLite
    return count / await in_parallel(count, concurrency, onboard)


def hash_ms(variables: dict[str, str]) -> float:
    """Milliseconds of one hash with these parameters, one at a time, on this machine now:
    the cores are shared, and what others run changes it from run to run."""
    fields: dict[str, Any] = {name.lower(): value for name, value in variables.items()}
    settings = Settings(_env_file=None, **fields)
    hashing = PasswordHashing.from_settings(settings)
    try:
        began = time.perf_counter()
        for _ in range(HASHES_TIMED):
            hashing.hasher.hash("calibration")
        return (time.perf_counter() - began) * 1000 / HASHES_TIMED
    finally:
        hashing.close()


async def measure(variables: dict[str, str], requests: int, concurrency: int) -> Row:
    calibration = hash_ms(variables)
    load_average = os.getloadavg()[0]
    async with dev_stack(variables) as (gateway, api_key, temporal):
        client = await Client.connect(temporal, data_converter=pydantic_data_converter)
        # Any valid Argon2id hash will do: the sagas never check it.
        sagas = await saga_rate(client, PasswordHasher().hash("saga"), requests, concurrency)
        latencies: list[float] = []
        workflow_ids: list[str] = []
        statuses: list[int] = []
        without_retry_after = 0
        limits = httpx.Limits(max_connections=concurrency)
        async with httpx.AsyncClient(
            base_url=gateway, headers={"X-API-Key": api_key}, timeout=300, limits=limits
        ) as http:

            async def post(_: int) -> None:
                nonlocal without_retry_after
                unique = uuid.uuid4().hex
                body = {
                    "email": f"load.{unique}@example.com",
                    "name": "Load Test",
                    "password": f"password-{unique}",
                }
                started = time.perf_counter()
                response = await http.post("/api/users", json=body)
                statuses.append(response.status_code)
                if response.status_code == 202:
                    latencies.append((time.perf_counter() - started) * 1000)
                    workflow_ids.append(response.json()["workflowId"])
                elif response.status_code == 503 and "Retry-After" not in response.headers:
                    without_retry_after += 1

            await in_parallel(concurrency, concurrency, post)  # warm connections
            latencies.clear()
            workflow_ids.clear()
            statuses.clear()
            elapsed = await in_parallel(requests, concurrency, post)
        results = await asyncio.gather(
            *(client.get_workflow_handle(w).result() for w in workflow_ids),
            return_exceptions=True,
        )
    p50, p95 = percentiles(latencies)
    refused = statuses.count(503)
    return Row(
        hash_ms=calibration,
        load_average=load_average,
        saga_rate=sagas,
        accepted=len(latencies),
        refused=refused,
        refused_without_retry_after=without_retry_after,
        other=len(statuses) - len(latencies) - refused,
        accept_rate=len(latencies) / elapsed,
        p50_ms=p50,
        p95_ms=p95,
        completed=sum(not isinstance(result, BaseException) for result in results),
    )


async def main(requests: int, concurrency: int, configurations: list[str]) -> None:
    rows = {
        name: await measure(CONFIGURATIONS[name], requests, concurrency) for name in configurations
    }
    print(
        f"{requests} POST /api/users, {concurrency} at a time, each answered once; "
        f"the same number of sagas started straight on Temporal; {os.cpu_count()} cores"
    )
    print(
        f"{'hashing':16} {'hash ms':>7} {'load':>5} {'sagas/s':>7} {'accepted/s':>10} "
        f"{'p50 ms':>7} {'p95 ms':>7} {'202':>4} {'503':>4} {'other':>5} {'completed':>9}"
    )
    for name, row in rows.items():
        print(
            f"{name:16} {row.hash_ms:7.0f} {row.load_average:5.1f} {row.saga_rate:7.1f} "
            f"{row.accept_rate:10.1f} {row.p50_ms:7.0f} {row.p95_ms:7.0f} {row.accepted:4} "
            f"{row.refused:4} {row.other:5} {row.completed:9}"
        )
        if row.refused_without_retry_after:
            print(f"  {row.refused_without_retry_after} of the 503s had no Retry-After")
    print(
        "hash ms: one hash at a time in the benchmark's process just before the run; load: "
        "the 1-minute load average then (the cores are shared)"
    )
    print("goal: accepted/s >= sagas/s of the same run, p95 of the accepted <= 1000 ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument(
        "--configuration",
        action="append",
        choices=list(CONFIGURATIONS),
        help="Measure only these (repeatable); all by default.",
    )
    arguments = parser.parse_args()
    asyncio.run(
        main(
            arguments.requests,
            arguments.concurrency,
            arguments.configuration or list(CONFIGURATIONS),
        )
    )
