"""AIDecisionWorkflow: Claude chooses the next step of a support request from an allowed set;
the workflow checks the choice, asks a person when it is risky, and only then acts."""

from __future__ import annotations

import contextlib
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from nexpo_workflows import execution
    from nexpo_workflows.decisions.activities import (
        NO_LANGUAGE_MODEL,
        NO_PROVIDER,
        DecisionActivities,
    )
    from nexpo_workflows.decisions.models import (
        Approval,
        ApprovalInput,
        AutoReplyInput,
        DecideInput,
        DecisionAction,
        DecisionPolicy,
        DecisionProposal,
        DecisionRequest,
        DecisionResult,
        DecisionStage,
        DecisionStatus,
        EscalateInput,
        PolicyInput,
        RefundInput,
        Validation,
    )
    from nexpo_workflows.decisions.rules import refund_amount, validate
    from nexpo_workflows.errors import first_line
    from nexpo_workflows.llm.calls import INVALID_MODEL_ANSWER, LLM_REQUEST_REFUSED
    from nexpo_workflows.notify.delivery import send_on_each_channel
    from nexpo_workflows.retries import PLAN_RETRY
    from nexpo_workflows.workflow_errors import raise_refusal

ALREADY_ANSWERED = "ApprovalAlreadyGiven"
_MODEL_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(seconds=60),
    maximum_attempts=6,
    non_retryable_error_types=[LLM_REQUEST_REFUSED, INVALID_MODEL_ANSWER, NO_LANGUAGE_MODEL],
)
# Bounded: an action that cannot be done goes to a person instead of waiting forever.
_ACTION_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=500),
    maximum_interval=timedelta(seconds=10),
    maximum_attempts=5,
    non_retryable_error_types=[NO_PROVIDER],
)
# The escalation is the request's last way to a person: more patient than an action (about
# an hour per channel), but bounded, and a channel that refused for good is not retried.
_ESCALATION_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(minutes=5),
    maximum_attempts=20,
)
ESCALATION_UNDELIVERED = "EscalationUndelivered"


def _reasons(failed: dict[str, str]) -> str:
    return "; ".join(f"{channel}: {reason}" for channel, reason in failed.items()) or "no channel"


@workflow.defn(name="AIDecisionWorkflow")
class AIDecisionWorkflow:
    @workflow.init
    def __init__(self, request: DecisionRequest) -> None:
        self._request = request
        self._stage = DecisionStage.DECIDING
        self._proposal: DecisionProposal | None = None
        self._validation: Validation | None = None
        self._approval_deadline: datetime | None = None
        self._approval: Approval | None = None
        self._result: DecisionResult | None = None
        self._channels: list[str] = []
        self._notified: list[str] = []

    @workflow.run
    async def run(self, request: DecisionRequest) -> DecisionResult:
        policy: DecisionPolicy = await execution.execute_activity(
            DecisionActivities.load_decision_policy,
            PolicyInput(),
            local=True,
            start_to_close_timeout=timedelta(seconds=10),
            retry_policy=PLAN_RETRY,
        )
        self._channels = policy.channels
        proposal = self._proposal = await self._decide(policy)
        decision = proposal.decision
        validation = self._validation = validate(decision, request, policy)
        # Why a person gets the request instead; None while the model's choice stands.
        escalation: str | None = None
        if not validation.accepted:
            escalation = f"the model's choice was refused: {validation.reason}"
        elif decision.action == DecisionAction.ESCALATE:
            escalation = decision.parameters.reason
        elif validation.requires_approval and not execution.durable():
            escalation = (
                f"{validation.approval_reason}: an approval needs ENABLE_TEMPORAL=true, so a "
                "person decides instead"
            )
        elif validation.requires_approval:
            escalation = await self._await_approval(policy, validation)
        self._stage = DecisionStage.EXECUTING
        if escalation is None:
            escalation = await self._execute()
        if escalation is None:
            executed = DecisionAction(decision.action)
        else:
            await self._escalate(escalation)
            executed = DecisionAction.ESCALATE
        approval = self._approval
        self._result = DecisionResult(
            request_id=request.request_id,
            action_chosen=decision.action,
            action_executed=executed,
            refused_reason=validation.reason,
            escalation_reason=escalation,
            approved_by=approval.approver if approval and approval.approved else None,
            notified=self._notified,
            rationale=decision.rationale,
            risk=decision.risk,
            model=proposal.model,
            usage=proposal.usage,
        )
        self._stage = DecisionStage.COMPLETED
        # workflow.logger is silent during replay, so the outcome is logged once.
        execution.logger().info(
            "decision %s: %s chose %r, executed %s%s",
            request.request_id,
            proposal.model,
            decision.action,
            executed,
            f" ({escalation})" if escalation else "",
        )
        await execution.all_handlers_finished()
        return self._result

    async def _decide(self, policy: DecisionPolicy) -> DecisionProposal:
        try:
            proposal: DecisionProposal = await execution.execute_activity(
                DecisionActivities.decide_next_step,
                DecideInput(request=self._request, policy=policy),
                start_to_close_timeout=timedelta(minutes=10),
                # The call heartbeats while the model thinks: a lost worker is seen in this.
                heartbeat_timeout=timedelta(seconds=30),
                retry_policy=_MODEL_RETRY,
            )
        except ActivityError as error:
            raise_refusal(error)
        return proposal

    async def _await_approval(self, policy: DecisionPolicy, validation: Validation) -> str | None:
        """None when a person approved; otherwise why the request is escalated instead."""
        self._stage = DecisionStage.AWAITING_APPROVAL
        timeout = policy.approval_timeout_seconds
        self._approval_deadline = workflow.now() + timedelta(seconds=timeout)
        execution.logger().info(
            "decision %s awaits approval: %s", self._request.request_id, validation.approval_reason
        )
        with contextlib.suppress(TimeoutError):
            await workflow.wait_condition(lambda: self._approval is not None, timeout=timeout)
        # Checked rather than trusting the timeout: an approval accepted in the same workflow
        # task as the deadline's timer wins, as its update was answered with it.
        approval = self._approval
        if approval is None:
            return f"no approval within {timeout:g}s ({validation.approval_reason})"
        if approval.approved:
            return None
        comments = f": {approval.comments}" if approval.comments else ""
        return f"rejected by {approval.approver}{comments}"

    async def _execute(self) -> str | None:
        """Run the accepted choice; None when done, else why it falls back to a person."""
        assert self._proposal is not None
        decision = self._proposal.decision
        workflow_id = execution.workflow_id()
        try:
            if decision.action == DecisionAction.AUTO_REPLY:
                deliveries = await send_on_each_channel(
                    self._channels,
                    DecisionActivities.send_auto_reply,
                    lambda channel: AutoReplyInput(
                        workflow_id=workflow_id,
                        channel=channel,
                        request=self._request,
                        reply=decision.parameters.reply or "",
                    ),
                    _ACTION_RETRY,
                    "decision.auto_reply",
                )
                self._notified = deliveries.delivered
                if not deliveries.delivered:
                    return f"{decision.action} failed: {_reasons(deliveries.failed)}"
            elif decision.action == DecisionAction.REFUND:
                amount = refund_amount(decision)
                assert amount is not None  # checked by validate()
                approval = self._approval
                await execution.execute_activity(
                    DecisionActivities.issue_refund,
                    RefundInput(
                        workflow_id=workflow_id,
                        request=self._request,
                        amount=amount,
                        approved_by=approval.approver if approval else None,
                        issued_at=execution.now(),
                    ),
                    start_to_close_timeout=timedelta(seconds=60),
                    retry_policy=_ACTION_RETRY,
                )
        except ActivityError as error:
            return f"{decision.action} failed: {first_line(error.cause or error)}"
        return None

    async def _escalate(self, reason: str) -> None:
        assert self._proposal is not None
        decision = self._proposal.decision
        deliveries = await send_on_each_channel(
            self._channels,
            DecisionActivities.escalate_to_human,
            lambda channel: EscalateInput(
                workflow_id=execution.workflow_id(),
                channel=channel,
                request=self._request,
                reason=reason,
                action_chosen=decision.action,
                rationale=decision.rationale,
            ),
            _ESCALATION_RETRY,
            "decision.escalated",
        )
        self._notified = deliveries.delivered
        if not deliveries.delivered:
            # Nobody was told: the run fails, visibly, rather than end as if a person had it.
            raise ApplicationError(
                f"request {self._request.request_id} needs a person, but the escalation was "
                f"delivered on no channel: {_reasons(deliveries.failed)}",
                type=ESCALATION_UNDELIVERED,
                non_retryable=True,
            )

    @workflow.query(name="status")
    def status(self) -> DecisionStatus:
        return DecisionStatus(
            request_id=self._request.request_id,
            stage=self._stage,
            decision=self._proposal.decision if self._proposal else None,
            validation=self._validation,
            approval_deadline=self._approval_deadline,
            approval=self._approval,
            result=self._result,
        )

    @workflow.update(name="approve_decision")
    async def approve_decision(self, input: ApprovalInput) -> DecisionStatus:
        # Two updates accepted in one workflow task both pass the validator: the first wins.
        if self._approval is not None:
            raise ApplicationError(
                f"already answered by {self._approval.approver}", type=ALREADY_ANSWERED
            )
        self._approval = Approval(
            approver=input.approver.strip(),
            approved=input.approved,
            comments=input.comments.strip(),
            at=workflow.now(),
        )
        # Answer with what the approval led to, not with the state it found.
        await workflow.wait_condition(lambda: self._stage is not DecisionStage.AWAITING_APPROVAL)
        return self.status()

    @approve_decision.validator
    def _validate_approval(self, input: ApprovalInput) -> None:
        if self._stage is not DecisionStage.AWAITING_APPROVAL or self._approval is not None:
            raise ValueError(
                f"decision {self._request.request_id} is not awaiting approval "
                f"(stage: {self._stage})"
            )
        if not input.approver.strip():
            raise ValueError("an approver is required")
