"""Metrics and logging: the SDK runtime's Prometheus exporter and the completion counter."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from temporalio import activity, workflow
from temporalio.exceptions import FailureError, is_cancelled_exception
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig
from temporalio.worker import (
    ExecuteWorkflowInput,
    Interceptor,
    WorkflowInboundInterceptor,
    WorkflowInterceptorClassInput,
)

from nexpo_workflows.ports import ensure_free, split_host_port

WORKFLOW_COMPLETIONS = "workflow_completions"
"""Exported as ``workflow_completions_total{workflow_type,status}`` (OpenMetrics suffix)."""


def create_runtime(metrics_bind_address: str) -> Runtime:
    """A runtime that serves the SDK's metrics, and ours, on ``metrics_bind_address``.

    With an empty address the runtime exports nothing (tests, or metrics off by choice).
    """
    if not metrics_bind_address:
        return Runtime(telemetry=TelemetryConfig())
    ensure_free(*split_host_port(metrics_bind_address), "Prometheus metrics")
    metrics = PrometheusConfig(bind_address=metrics_bind_address, counters_total_suffix=True)
    return Runtime(telemetry=TelemetryConfig(metrics=metrics))


class _CompletionCountingInbound(WorkflowInboundInterceptor):
    async def execute_workflow(self, input: ExecuteWorkflowInput) -> Any:
        # The workflow meter drops points during replay, so each completion is counted once.
        counter = workflow.metric_meter().create_counter(
            WORKFLOW_COMPLETIONS, "Workflow executions that finished, by type and outcome"
        )
        workflow_type = workflow.info().workflow_type
        try:
            result = await super().execute_workflow(input)
        except BaseException as error:
            status = _closing_status(error)
            if status is not None:
                counter.add(1, {"workflow_type": workflow_type, "status": status})
            raise
        counter.add(1, {"workflow_type": workflow_type, "status": "success"})
        return result


def _closing_status(error: BaseException) -> str | None:
    """How an exception closes the workflow; None when it only fails the task (which retries)."""
    if isinstance(error, workflow.ContinueAsNewError):
        return "continued_as_new"
    if is_cancelled_exception(error):
        return "cancelled"
    if isinstance(error, FailureError):
        return "failed"
    return None


class CompletionMetricsInterceptor(Interceptor):
    """Counts every workflow completion of this worker, one place for all workflow types."""

    def workflow_interceptor_class(
        self, input: WorkflowInterceptorClassInput
    ) -> type[WorkflowInboundInterceptor] | None:
        return _CompletionCountingInbound


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class TemporalContextFormatter(logging.Formatter):
    """Ends each line from ``workflow.logger`` or ``activity.logger`` with
    ``workflow_id=... run_id=... activity=...``, read from the ``temporal_workflow`` and
    ``temporal_activity`` extras the SDK puts on the record."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        message = super().formatMessage(record)
        context = _temporal_context(record)
        return f"{message} {context}" if context else message


def _temporal_context(record: logging.LogRecord) -> str:
    fields: dict[str, object] = {}
    in_workflow = getattr(record, "temporal_workflow", None)
    if isinstance(in_workflow, Mapping):
        fields.update(workflow_id=in_workflow.get("workflow_id"), run_id=in_workflow.get("run_id"))
    in_activity = getattr(record, "temporal_activity", None)
    if isinstance(in_activity, Mapping):
        fields.update(
            workflow_id=in_activity.get("workflow_id"),
            run_id=in_activity.get("workflow_run_id"),
            activity=in_activity.get("activity_type"),
        )
    return " ".join(f"{key}={value}" for key, value in fields.items() if value is not None)


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(TemporalContextFormatter(LOG_FORMAT))
    logging.basicConfig(level=level, handlers=[handler])
    # The formatter shows the ids; the SDK's dict of workflow/activity info appended to each
    # message would repeat them.
    workflow.logger.workflow_info_on_message = False
    activity.logger.activity_info_on_message = False
