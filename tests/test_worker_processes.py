"""Worker processes: scale-out on one task queue, graceful stop, Prometheus metrics."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import socket
import uuid
from collections.abc import AsyncIterator

import httpx
from temporalio.api.enums.v1 import EventType, TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client

from nexpo_workflows.health.models import HealthCheckInput
from nexpo_workflows.health.workflow import HealthCheckWorkflow
from nexpo_workflows.ports import free_port
from tests.conftest import run_cli


@contextlib.asynccontextmanager
async def worker_process(
    cli: list[str], env: dict[str, str], **extra: str
) -> AsyncIterator[asyncio.subprocess.Process]:
    process = await asyncio.create_subprocess_exec(
        *cli, "worker", env={**env, **extra}, stderr=asyncio.subprocess.PIPE
    )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def wait_for_pollers(client: Client, task_queue: str, identities: set[str]) -> None:
    request = DescribeTaskQueueRequest(
        namespace=client.namespace,
        task_queue=TaskQueue(name=task_queue),
        task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
    )
    for _ in range(300):
        response = await client.workflow_service.describe_task_queue(request)
        if identities <= {poller.identity for poller in response.pollers}:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"workers {identities} never polled {task_queue}")


async def run_health_checks(client: Client, task_queue: str, count: int) -> list[str]:
    ids = [f"health-{uuid.uuid4()}" for _ in range(count)]
    await asyncio.gather(
        *(
            client.execute_workflow(
                HealthCheckWorkflow.run, HealthCheckInput(), id=i, task_queue=task_queue
            )
            for i in ids
        )
    )
    return ids


async def activity_workers(client: Client, workflow_id: str) -> set[str]:
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    return {
        event.activity_task_started_event_attributes.identity
        for event in history.events
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
    }


async def test_two_worker_processes_share_one_task_queue(
    cli: list[str], cli_env: dict[str, str], client: Client, task_queue: str
) -> None:
    async with (
        worker_process(cli, cli_env, TEMPORAL_WORKER_IDENTITY="worker-a") as a,
        worker_process(cli, cli_env, TEMPORAL_WORKER_IDENTITY="worker-b") as b,
    ):
        await wait_for_pollers(client, task_queue, {"worker-a", "worker-b"})
        seen: set[str] = set()
        for _ in range(5):
            for workflow_id in await run_health_checks(client, task_queue, 20):
                seen |= await activity_workers(client, workflow_id)
            if seen == {"worker-a", "worker-b"}:
                break
        assert seen == {"worker-a", "worker-b"}
        assert a.returncode is None
        assert b.returncode is None


async def test_sigterm_stops_the_worker_gracefully_with_exit_code_0(
    cli: list[str], cli_env: dict[str, str], client: Client, task_queue: str
) -> None:
    async with worker_process(cli, cli_env, TEMPORAL_WORKER_IDENTITY="stopping") as worker:
        await wait_for_pollers(client, task_queue, {"stopping"})
        await run_health_checks(client, task_queue, 1)
        worker.send_signal(signal.SIGTERM)
        returncode = await asyncio.wait_for(worker.wait(), 30)
        assert worker.stderr is not None
        stderr = (await worker.stderr.read()).decode()
    assert returncode == 0, stderr
    assert "Traceback" not in stderr


async def test_completions_are_counted_on_the_metrics_endpoint(
    cli: list[str], cli_env: dict[str, str], client: Client, task_queue: str
) -> None:
    metrics_address = f"127.0.0.1:{free_port()}"
    async with worker_process(
        cli, cli_env, METRICS_BIND_ADDRESS=metrics_address, TEMPORAL_WORKER_IDENTITY="metered"
    ):
        await wait_for_pollers(client, task_queue, {"metered"})
        await run_health_checks(client, task_queue, 3)
        pattern = re.compile(
            r'^workflow_completions_total\{(?=[^}]*status="success")'
            r'(?=[^}]*workflow_type="HealthCheckWorkflow")[^}]*\} (\d+)$',
            re.MULTILINE,
        )
        async with httpx.AsyncClient() as http:
            for _ in range(50):
                text = (await http.get(f"http://{metrics_address}/metrics")).text
                match = pattern.search(text)
                if match and int(match.group(1)) == 3:
                    break
                await asyncio.sleep(0.2)
        assert match is not None, text
        assert int(match.group(1)) == 3
        # The SDK's own metrics are exported by the same runtime.
        assert "temporal_workflow_completed" in text


async def test_a_taken_metrics_port_is_named(cli: list[str], cli_env: dict[str, str]) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        result = await run_cli(
            [*cli, "worker"], {**cli_env, "METRICS_BIND_ADDRESS": f"127.0.0.1:{port}"}
        )
    assert result.returncode == 1
    assert f"port {port} on 127.0.0.1 (Prometheus metrics) is already in use" in result.stderr
