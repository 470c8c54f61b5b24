"""Decision operations behind the gateway and the CLI: start, look up, approve."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowHandle,
    WorkflowUpdateFailedError,
)
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from nexpo_workflows.decisions.models import (
    ApprovalInput,
    DecisionRequest,
    DecisionResult,
    DecisionStage,
    DecisionStatus,
)
from nexpo_workflows.decisions.workflow import AIDecisionWorkflow

# How often `wait` asks a running decision whether it now awaits a person.
_POLL_SECONDS = 0.5


def decision_workflow_id(request_id: str) -> str:
    return f"decision-{request_id}"


class DecisionExistsError(Exception):
    def __init__(self, request_id: str) -> None:
        workflow_id = decision_workflow_id(request_id)
        super().__init__(f"request {request_id} already has a decision: workflow {workflow_id}")
        self.workflow_id = workflow_id


class DecisionNotFoundError(LookupError):
    def __init__(self, request_id: str) -> None:
        super().__init__(f"no decision for request {request_id}")


class ApprovalRefusedError(Exception):
    """The decision does not take this approval (not awaiting one, or no approver)."""


@dataclass
class DecisionService:
    client: Client
    task_queue: str
    # How long a query or an update waits for a worker (TEMPORAL_ANSWER_TIMEOUT_SECONDS).
    answer_timeout: timedelta = timedelta(seconds=30)

    def _handle(self, request_id: str) -> WorkflowHandle[Any, DecisionResult]:
        return self.client.get_workflow_handle_for(
            AIDecisionWorkflow.run, decision_workflow_id(request_id)
        )

    async def start(self, request: DecisionRequest) -> WorkflowHandle[Any, DecisionResult]:
        """One decision per request id; a failed one (the model refused) may be tried again."""
        try:
            return await self.client.start_workflow(
                AIDecisionWorkflow.run,
                request,
                id=decision_workflow_id(request.request_id),
                task_queue=self.task_queue,
                id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
                id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
            )
        except WorkflowAlreadyStartedError:
            raise DecisionExistsError(request.request_id) from None

    async def status(self, request_id: str) -> DecisionStatus:
        try:
            status: DecisionStatus = await self._handle(request_id).query(
                AIDecisionWorkflow.status, rpc_timeout=self.answer_timeout
            )
        except RPCError as error:
            if error.status == RPCStatusCode.NOT_FOUND:
                raise DecisionNotFoundError(request_id) from None
            raise
        return status

    async def approve(self, request_id: str, approval: ApprovalInput) -> DecisionStatus:
        handle = self._handle(request_id)
        try:
            # By name: the SDK's typing of an async update method does not match its own stub.
            updated: DecisionStatus = await handle.execute_update(
                "approve_decision",
                approval,
                result_type=DecisionStatus,
                rpc_timeout=self.answer_timeout,
            )
            return updated
        except WorkflowUpdateFailedError as error:
            raise ApprovalRefusedError(str(error.cause or error)) from None
        except RPCError as error:
            if error.status != RPCStatusCode.NOT_FOUND:
                raise
        # Not found: no such workflow, or one that has finished and takes no update.
        try:
            described = await handle.describe()
        except RPCError as error:
            if error.status == RPCStatusCode.NOT_FOUND:
                raise DecisionNotFoundError(request_id) from None
            raise
        state = (described.status or WorkflowExecutionStatus.RUNNING).name.lower()
        raise ApprovalRefusedError(
            f"decision {request_id} is not awaiting approval (workflow {state})"
        )

    async def wait(self, request_id: str) -> DecisionStatus:
        """The status once the decision is done or waits for a person; a failed decision
        raises its WorkflowFailureError."""
        finished = asyncio.ensure_future(self._handle(request_id).result())
        try:
            while not finished.done():
                status = await self.status(request_id)
                if status.stage is DecisionStage.AWAITING_APPROVAL:
                    return status
                await asyncio.wait({finished}, timeout=_POLL_SECONDS)
            finished.result()
        finally:
            finished.cancel()
        return await self.status(request_id)
