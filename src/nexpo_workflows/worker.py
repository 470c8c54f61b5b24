"""The worker: every registered workflow and activity on one task queue."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

from temporalio.client import Client
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from nexpo_workflows import registry
from nexpo_workflows.client import connect
from nexpo_workflows.config import Settings
from nexpo_workflows.execution import activity_name
from nexpo_workflows.services import Services
from nexpo_workflows.telemetry import CompletionMetricsInterceptor, create_runtime
from nexpo_workflows.tracing import configure_tracing

log = logging.getLogger(__name__)


def workflow_runner() -> SandboxedWorkflowRunner:
    """The sandbox workflows run in, on workers and in the replay tests alike."""
    return SandboxedWorkflowRunner(
        # Loaded lazily by pydantic's email validation inside workflows.
        restrictions=SandboxRestrictions.default.with_passthrough_modules("email_validator", "idna")
    )


def build_worker(
    client: Client,
    services: Services,
    *,
    task_queue: str | None = None,
    extra_workflows: Sequence[type] = (),
    extra_activities: Sequence[Callable[..., Any]] = (),
) -> Worker:
    """A worker for every registered workflow and activity, plus an application's own.

    An extra activity with the name of a registered one replaces it (a test's fault
    injection, or an application's own implementation of a step).
    """
    settings = services.settings
    by_name = {activity_name(fn): fn for fn in (*registry.activities(services), *extra_activities)}
    return Worker(
        client,
        task_queue=task_queue or settings.temporal_task_queue,
        workflows=[*registry.WORKFLOWS, *extra_workflows],
        activities=list(by_name.values()),
        interceptors=[CompletionMetricsInterceptor()],
        workflow_runner=workflow_runner(),
        identity=settings.temporal_worker_identity,
        max_concurrent_workflow_tasks=settings.temporal_max_concurrent_workflow_tasks,
        max_concurrent_activities=settings.temporal_max_concurrent_activities,
        max_concurrent_local_activities=settings.temporal_max_concurrent_local_activities,
        graceful_shutdown_timeout=timedelta(seconds=settings.temporal_graceful_shutdown_seconds),
    )


async def run_worker_until(worker: Worker, stop: asyncio.Event) -> None:
    """Run until ``stop`` is set, then shut down gracefully; a worker error propagates."""
    running = asyncio.create_task(worker.run())
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({running, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if running.done():
        stopping.cancel()
        running.result()
        return
    log.info("shutting down the worker; in-flight activities may finish first")
    await worker.shutdown()
    await running


def stop_on_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)


async def serve(settings: Settings) -> None:
    """``nexpo-workflows worker``: connect, poll the task queue, stop on SIGINT/SIGTERM."""
    stop = asyncio.Event()
    stop_on_signals(stop)
    runtime = create_runtime(settings.metrics_bind_address)
    tracing = configure_tracing(settings)
    client = await connect(settings, runtime=runtime, interceptors=tracing.interceptors)
    services = Services.from_settings(settings, client)
    try:
        worker = build_worker(client, services)
        log.info(
            "worker polling task queue %s on %s (namespace %s)",
            settings.temporal_task_queue,
            settings.temporal_target,
            settings.temporal_effective_namespace,
        )
        await run_worker_until(worker, stop)
    finally:
        await services.close()
        tracing.shutdown()
