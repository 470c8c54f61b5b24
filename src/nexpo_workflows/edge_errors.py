"""What the edges (the gateway and the CLI) say when a dependency or the input is the problem.

One classification serves both: a dependency that is down, or password hashing with its queue
full, is "unavailable" (HTTP 503 with a Retry-After, CLI exit 1), input a dependency refused
is "refused" (HTTP 422, CLI exit 2), and a Temporal answer about something that does not
exist or already does is "not_found" (404, exit 1) or "conflict" (409, exit 1). A workflow
that failed (run in this process, where the edge awaits it) is "unavailable" when a step gave
up retrying, "conflict" when it needs Temporal, "refused" otherwise. Anything else is a bug
and stays one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from temporalio.client import WorkflowFailureError, WorkflowUpdateRPCTimeoutOrCancelledError
from temporalio.exceptions import ActivityError, ApplicationError, RetryState
from temporalio.service import RPCError, RPCStatusCode

from nexpo_workflows.client import TemporalUnavailableError
from nexpo_workflows.errors import first_line
from nexpo_workflows.execution import NEEDS_TEMPORAL
from nexpo_workflows.health.run import HealthCheckUnavailableError
from nexpo_workflows.providers import InvalidRecordError, ProviderUnavailableError
from nexpo_workflows.storage import StoreUnavailableError
from nexpo_workflows.users.passwords import PasswordHashingBusyError

Kind = Literal["unavailable", "refused", "not_found", "conflict"]

# Every exception ``classify`` answers for; the edges catch exactly these.
EDGE_ERRORS: tuple[type[Exception], ...] = (
    RPCError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
    TemporalUnavailableError,
    HealthCheckUnavailableError,
    ProviderUnavailableError,
    InvalidRecordError,
    StoreUnavailableError,
    PasswordHashingBusyError,
    WorkflowFailureError,
)

# Seconds a client should wait before trying again when a dependency is down (Retry-After).
RETRY_AFTER_SECONDS = 5

TEMPORAL = "temporal"
WORKER = "worker"
DATABASE = "database"
OBJECT_STORE = "object store"
PASSWORD_HASHING = "password hashing"
WORKFLOW = "workflow"

# What a query or an update gets when no worker answers within its rpc_timeout.
_TIMEOUTS = {RPCStatusCode.CANCELLED, RPCStatusCode.DEADLINE_EXCEEDED}
_RPC_KINDS: dict[RPCStatusCode, Kind] = {
    RPCStatusCode.NOT_FOUND: "not_found",
    RPCStatusCode.ALREADY_EXISTS: "conflict",
    RPCStatusCode.FAILED_PRECONDITION: "conflict",
    RPCStatusCode.INVALID_ARGUMENT: "refused",
    RPCStatusCode.OUT_OF_RANGE: "refused",
}


@dataclass(frozen=True)
class EdgeFailure:
    kind: Kind
    # The dependency that failed or refused (``temporal``, ``database``, ``object store``).
    dependency: str
    reason: str

    @property
    def message(self) -> str:
        if self.kind == "unavailable":
            return f"{self.dependency} is unavailable: {self.reason}"
        if self.kind == "refused":
            return f"{self.dependency} refused the request: {self.reason}"
        return f"{self.dependency}: {self.reason}"


def classify(error: Exception) -> EdgeFailure:
    """The failure ``error`` (one of ``EDGE_ERRORS``) stands for."""
    reason = first_line(error)
    if isinstance(error, WorkflowUpdateRPCTimeoutOrCancelledError) or (
        isinstance(error, RPCError) and error.status in _TIMEOUTS
    ):
        return EdgeFailure("unavailable", WORKER, f"no answer in time (is one running?): {reason}")
    if isinstance(error, RPCError):
        return EdgeFailure(_RPC_KINDS.get(error.status, "unavailable"), TEMPORAL, reason)
    if isinstance(error, TemporalUnavailableError | HealthCheckUnavailableError):
        return EdgeFailure("unavailable", TEMPORAL, reason)
    if isinstance(error, ProviderUnavailableError):
        # The providers' messages start with their name ("postgres: connection refused").
        return EdgeFailure("unavailable", DATABASE, reason)
    if isinstance(error, InvalidRecordError):
        return EdgeFailure("refused", DATABASE, reason)
    if isinstance(error, StoreUnavailableError):
        return EdgeFailure("unavailable", OBJECT_STORE, reason)
    if isinstance(error, PasswordHashingBusyError):
        return EdgeFailure("unavailable", PASSWORD_HASHING, reason)
    if isinstance(error, WorkflowFailureError):
        return _workflow_failure(error)
    raise TypeError(f"{type(error).__name__} is not an edge error") from error


def _workflow_failure(error: WorkflowFailureError) -> EdgeFailure:
    cause = error.cause or error
    if isinstance(cause, ApplicationError) and cause.type == NEEDS_TEMPORAL:
        return EdgeFailure("conflict", TEMPORAL, first_line(cause))
    link: BaseException | None = cause
    while link is not None and not isinstance(link, ActivityError):
        link = link.__cause__
    if isinstance(link, ActivityError) and link.retry_state != RetryState.NON_RETRYABLE_FAILURE:
        return EdgeFailure("unavailable", f"step {link.activity_type}", first_line(cause))
    # A run that a dependency stopped part-way carries its account (what was undone) along.
    if isinstance(cause, ApplicationError) and cause.details:
        return EdgeFailure("unavailable", WORKFLOW, first_line(cause))
    return EdgeFailure("refused", WORKFLOW, first_line(cause))
