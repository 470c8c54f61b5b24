"""Run the health check the way the configuration asks: as a workflow, or directly."""

from __future__ import annotations

import uuid
from datetime import timedelta

from temporalio.client import Client, WorkflowFailureError
from temporalio.service import RPCError

from nexpo_workflows.config import Settings
from nexpo_workflows.health.models import HealthCheckInput, HealthReport
from nexpo_workflows.health.workflow import HealthCheckWorkflow
from nexpo_workflows.services import Services


class HealthCheckUnavailableError(Exception):
    """The health-check workflow could not run (no worker on the queue, or Temporal down)."""


async def run_health_check(services: Services, client: Client | None) -> HealthReport:
    """With a client, through HealthCheckWorkflow on a worker; without, the same probes here."""
    settings: Settings = services.settings
    timeout = settings.health_check_timeout_seconds
    if client is None:
        return await services.checker.check_all(timeout)
    try:
        return await client.execute_workflow(
            HealthCheckWorkflow.run,
            HealthCheckInput(timeout_seconds=timeout),
            id=f"health-check-{uuid.uuid4()}",
            task_queue=settings.temporal_task_queue,
            execution_timeout=timedelta(
                seconds=timeout + settings.health_check_worker_wait_seconds
            ),
        )
    except WorkflowFailureError as error:
        raise HealthCheckUnavailableError(
            f"the health check did not complete on task queue {settings.temporal_task_queue} "
            f"(is a worker running?): {error.cause or error}"
        ) from error
    except RPCError as error:
        raise HealthCheckUnavailableError(
            f"cannot start the health check on {settings.temporal_target}: {error}"
        ) from error
