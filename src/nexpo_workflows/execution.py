"""Where a workflow's code runs: on a Temporal worker (durable), or in this process when
``ENABLE_TEMPORAL=false`` (not durable: a process that dies mid-run leaves what was written).

The workflows call the functions here, not ``temporalio.workflow``'s, for what both modes do
(activities, the clock, their own id), so the same decisions and compensation order run in
both. In this process each activity runs as a worker would run it: in an activity context
(its logger, heartbeats), attempt after attempt under its retry policy and timeouts, and its
last failure reaches the workflow as the ``ActivityError`` a worker would give it. What needs
durability (waiting for a person, schedules, monitors) checks ``durable()`` and is refused
before anything is written.

Imported passed through the workflow sandbox; in a workflow every function only calls the
deterministic workflow APIs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from temporalio import activity, workflow
from temporalio.client import WorkflowFailureError
from temporalio.common import RetryPolicy
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    FailureError,
    RetryState,
    TimeoutType,
    WorkflowAlreadyStartedError,
)
from temporalio.exceptions import TimeoutError as ActivityTimeoutError

A = TypeVar("A")
R = TypeVar("R")
W = TypeVar("W")

# The error type of a request that needs a Temporal server (answered 409, exit 2).
NEEDS_TEMPORAL = "NeedsTemporal"
# Temporal's own default when a policy leaves the maximum interval out.
_DEFAULT_MAX_INTERVAL_FACTOR = 100


def activity_name(fn: Callable[..., Any]) -> str:
    """The name an activity function or method is registered under."""
    name = activity._Definition.must_from_callable(fn).name
    if name is None:
        raise TypeError(f"{fn!r} is a dynamic activity: it has no name")
    return name


def durable() -> bool:
    """True inside a Temporal workflow: it can wait for people and outlive this process."""
    return workflow.in_workflow()


def needs_temporal(what: str) -> ApplicationError:
    return ApplicationError(
        f"{what} needs ENABLE_TEMPORAL=true (without Temporal nothing can wait durably)",
        type=NEEDS_TEMPORAL,
        non_retryable=True,
    )


async def execute_activity(
    fn: Callable[..., Any] | str,
    arg: Any,
    *,
    local: bool = False,
    result_type: type | None = None,
    **options: Any,
) -> Any:
    """``workflow.execute_activity`` (or its local form) in a workflow; in this process, the
    activity run under the same options."""
    if workflow.in_workflow():
        # By function or by name, as the SDK takes either.
        target: Any = fn
        if local:
            return await workflow.execute_local_activity(
                target, arg, result_type=result_type, **options
            )
        return await workflow.execute_activity(target, arg, result_type=result_type, **options)
    name = fn if isinstance(fn, str) else activity_name(fn)
    return await _current_run().execute(name, arg, options)


def now() -> datetime:
    return workflow.now() if workflow.in_workflow() else datetime.now(UTC)


def workflow_id() -> str:
    return workflow.info().workflow_id if workflow.in_workflow() else _current_run().workflow_id


def run_id() -> str:
    return workflow.info().run_id if workflow.in_workflow() else _current_run().run_id


class _RunLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Names the run, as the workflow logger does on a worker."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, Any]:
        return f"{msg} ({self.extra})", kwargs


_in_process_log = logging.getLogger("nexpo_workflows.in_process")


def logger() -> logging.LoggerAdapter:  # type: ignore[type-arg]
    """``workflow.logger`` in a workflow (silent during replay); in this process, a logger
    that names the run."""
    if workflow.in_workflow():
        return workflow.logger
    return _RunLogger(_in_process_log, {"workflow_id": _current_run().workflow_id})


def continue_as_new_suggested() -> bool:
    """Only a workflow has a history to bound; a run in this process goes on in one piece."""
    return workflow.in_workflow() and workflow.info().is_continue_as_new_suggested()


async def all_handlers_finished() -> None:
    """Before a workflow returns: an update's caller gets its answer first. A run in this
    process takes no updates."""
    if workflow.in_workflow():
        await workflow.wait_condition(workflow.all_handlers_finished)


@dataclass
class _InProcessRun:
    workflow_id: str
    run_id: str
    workflow_type: str
    activities: Mapping[str, Callable[..., Any]]

    async def execute(self, name: str, arg: Any, options: Mapping[str, Any]) -> Any:
        fn = self.activities.get(name)
        if fn is None:
            raise ApplicationError(f"no activity {name!r} is registered", non_retryable=True)
        policy: RetryPolicy = options.get("retry_policy") or RetryPolicy()
        attempt_timeout: timedelta | None = options.get("start_to_close_timeout")
        overall: timedelta | None = options.get("schedule_to_close_timeout")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + overall.total_seconds() if overall else None
        activity_id = uuid.uuid4().hex
        attempt = 1
        while True:
            time_left = None if deadline is None else max(deadline - loop.time(), 0.0)
            limits = [t for t in (_seconds(attempt_timeout), time_left) if t is not None]
            scope = asyncio.timeout(min(limits) if limits else None)
            try:
                async with scope:
                    return await self._attempt(fn, name, activity_id, attempt, arg, options)
            except FailureError as error:
                failure: FailureError = error
            except Exception as error:
                if isinstance(error, TimeoutError) and scope.expired():
                    failure = ActivityTimeoutError(
                        "activity timed out",
                        type=TimeoutType.START_TO_CLOSE,
                        last_heartbeat_details=[],
                    )
                else:  # what a worker reports of any other exception, a timeout of its own too
                    failure = ApplicationError(str(error), type=type(error).__name__)
                    failure.__cause__ = error
            delay = _retry_delay(policy, failure, attempt)
            retry_state = _final_state(policy, failure, attempt)
            if retry_state is None and deadline is not None and loop.time() + delay >= deadline:
                retry_state = RetryState.TIMEOUT
            if retry_state is not None:
                raise ActivityError(
                    "Activity task failed",
                    scheduled_event_id=0,
                    started_event_id=0,
                    identity="in-process",
                    activity_type=name,
                    activity_id=activity_id,
                    retry_state=retry_state,
                ) from failure
            await asyncio.sleep(delay)
            attempt += 1

    async def _attempt(
        self,
        fn: Callable[..., Any],
        name: str,
        activity_id: str,
        attempt: int,
        arg: Any,
        options: Mapping[str, Any],
    ) -> Any:
        # Imported here: the testing package is no part of a workflow's sandbox. Its activity
        # environment is the SDK's way to give an activity its context outside a worker.
        from temporalio.testing import ActivityEnvironment

        environment = ActivityEnvironment()
        environment.info = dataclasses.replace(
            environment.info,
            activity_id=activity_id,
            activity_type=name,
            attempt=attempt,
            workflow_id=self.workflow_id,
            workflow_run_id=self.run_id,
            workflow_type=self.workflow_type,
            start_to_close_timeout=options.get("start_to_close_timeout"),
            schedule_to_close_timeout=options.get("schedule_to_close_timeout"),
            heartbeat_timeout=options.get("heartbeat_timeout"),
            task_queue="in-process",
            is_local=False,
        )
        return await environment.run(fn, arg)


def _seconds(value: timedelta | None) -> float | None:
    return None if value is None else value.total_seconds()


def _final_state(policy: RetryPolicy, failure: FailureError, attempt: int) -> RetryState | None:
    """Why no further attempt is made, or None to retry."""
    if isinstance(failure, ApplicationError) and (
        failure.non_retryable or failure.type in (policy.non_retryable_error_types or ())
    ):
        return RetryState.NON_RETRYABLE_FAILURE
    if policy.maximum_attempts and attempt >= policy.maximum_attempts:
        return RetryState.MAXIMUM_ATTEMPTS_REACHED
    return None


def _retry_delay(policy: RetryPolicy, failure: FailureError, attempt: int) -> float:
    if isinstance(failure, ApplicationError) and failure.next_retry_delay is not None:
        return failure.next_retry_delay.total_seconds()
    initial = policy.initial_interval.total_seconds()
    maximum = (
        policy.maximum_interval.total_seconds()
        if policy.maximum_interval
        else initial * _DEFAULT_MAX_INTERVAL_FACTOR
    )
    return float(min(initial * policy.backoff_coefficient ** (attempt - 1), maximum))


_current: ContextVar[_InProcessRun | None] = ContextVar("nexpo_in_process_run", default=None)


def _current_run() -> _InProcessRun:
    run = _current.get()
    if run is None:
        raise RuntimeError("not in a workflow, nor in a run of one in this process")
    return run


def _workflow_class(run: Callable[..., Any]) -> type:
    owner: Any = sys.modules[run.__module__]
    for part in run.__qualname__.split(".")[:-1]:
        owner = getattr(owner, part)
    if not isinstance(owner, type):
        raise TypeError(f"{run.__qualname__} is not a workflow class's run method")
    return owner


def _workflow_type(workflow_class: type) -> str:
    definition = workflow._Definition.must_from_class(workflow_class)
    return definition.name or workflow_class.__name__


class InProcessRuns:
    """Workflows run to their end in this process, with the activities of a worker built for
    the same services. One run per workflow id at a time in this process, as the server
    allows one per id; across processes nothing is shared (that needs Temporal)."""

    def __init__(self, activities: Iterable[Callable[..., Any]]) -> None:
        self._activities = {activity_name(fn): fn for fn in activities}
        self._running: set[str] = set()

    async def execute(self, run: Callable[[W, A], Awaitable[R]], arg: A, *, id: str) -> R:
        """The workflow's result; its failure raised as a client sees it
        (``WorkflowFailureError`` whose cause is the workflow's error)."""
        workflow_class = _workflow_class(run)
        workflow_type = _workflow_type(workflow_class)
        if id in self._running:
            raise WorkflowAlreadyStartedError(id, workflow_type)
        takes_input = bool(inspect.signature(workflow_class).parameters)
        instance = workflow_class(arg) if takes_input else workflow_class()
        token = _current.set(
            _InProcessRun(
                workflow_id=id,
                run_id=str(uuid.uuid4()),
                workflow_type=workflow_type,
                activities=self._activities,
            )
        )
        self._running.add(id)
        try:
            return await run(instance, arg)
        except FailureError as error:
            raise WorkflowFailureError(cause=error) from error
        finally:
            self._running.discard(id)
            _current.reset(token)
