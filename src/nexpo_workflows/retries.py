"""Retry policies more than one workflow uses (imported passed through the sandbox)."""

from __future__ import annotations

from datetime import timedelta

from temporalio.common import RetryPolicy

# A plan is read from the worker's own configuration: what fails three times fails for good.
PLAN_RETRY = RetryPolicy(initial_interval=timedelta(milliseconds=200), maximum_attempts=3)
