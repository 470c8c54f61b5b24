"""Inputs, answers, state and result of the AI decision workflow."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from enum import StrEnum

from pydantic import BaseModel, EmailStr, Field, field_validator

from nexpo_workflows.llm import TokenUsage

REQUEST_ID_PATTERN = r"^[A-Za-z0-9_.:-]+$"


class DecisionAction(StrEnum):
    AUTO_REPLY = "auto_reply"
    ESCALATE = "escalate"
    REFUND = "refund"


class DecisionStage(StrEnum):
    DECIDING = "deciding"
    AWAITING_APPROVAL = "awaiting_approval"
    EXECUTING = "executing"
    COMPLETED = "completed"


class DecisionRequest(BaseModel):
    """An incoming support request, as the gateway and the CLI accept it."""

    request_id: str = Field(
        min_length=1,
        max_length=100,
        pattern=REQUEST_ID_PATTERN,
        description="The caller's id of the request: one decision (and at most one refund) per id.",
    )
    customer_email: EmailStr
    subject: str = Field(min_length=1, max_length=300)
    message: str = Field(min_length=1, max_length=20_000)
    order_id: str | None = Field(default=None, min_length=1, max_length=100)
    # Money, so no binary float: a refund is checked against it to the cent.
    order_amount: Decimal | None = Field(default=None, ge=0, max_digits=12, decimal_places=2)

    @field_validator("subject", "message")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value.strip()


class DecisionPolicy(BaseModel):
    """The worker's limits, recorded in the history so a replay validates with the same ones."""

    refund_limit: Decimal = Field(ge=0)
    # A refund above this always waits for a person, whatever risk the model gives it.
    approval_refund_above: Decimal = Field(ge=0)
    risk_threshold: float = Field(ge=0, le=1)
    approval_timeout_seconds: float = Field(gt=0)
    # The worker's notification channels: the reply and the escalation go out on each.
    channels: list[str] = Field(default_factory=list)


class PolicyInput(BaseModel):
    pass


class DecideInput(BaseModel):
    request: DecisionRequest
    policy: DecisionPolicy


class DecisionParameters(BaseModel):
    reply: str | None = Field(
        default=None, description="auto_reply: the text sent to the customer, signed as support."
    )
    reason: str | None = Field(
        default=None, description="escalate: why a person must handle the request."
    )
    amount: float | None = Field(
        default=None, description="refund: the amount to refund, in the order's currency."
    )


class ModelDecision(BaseModel):
    """The model's choice. ``action`` is a plain string on purpose: an answer outside the
    allowed set is parsed, and then refused by the workflow (not silently asked again)."""

    action: str = Field(
        description="The next step: auto_reply, escalate, or refund (refund only when the "
        "request names an order amount).",
        json_schema_extra={"enum": [action.value for action in DecisionAction]},
    )
    parameters: DecisionParameters = Field(default_factory=DecisionParameters)
    risk: float = Field(
        ge=0,
        le=1,
        description="How likely this step is wrong or harmful: 0 safe, 1 certainly harmful.",
    )
    rationale: str = Field(min_length=1, description="Why this step, in one or two sentences.")


class DecisionProposal(BaseModel):
    decision: ModelDecision
    model: str
    usage: TokenUsage
    attempts: int = Field(ge=1)
    offline: bool = False


class Validation(BaseModel):
    """The workflow's verdict on the model's choice."""

    accepted: bool
    # Why the choice was refused (and the request escalated instead).
    reason: str | None = None
    requires_approval: bool = False
    # Why a person must approve it first.
    approval_reason: str | None = None


class ApprovalInput(BaseModel):
    # Plain strings, checked by the update's validator, so a blank approver is refused with a
    # clear message rather than failing to decode.
    approver: str
    approved: bool
    comments: str = ""


class Approval(BaseModel):
    approver: str
    approved: bool
    comments: str
    at: datetime


class AutoReplyInput(BaseModel):
    workflow_id: str
    channel: str
    request: DecisionRequest
    reply: str = Field(min_length=1)


class EscalateInput(BaseModel):
    workflow_id: str
    channel: str
    request: DecisionRequest
    reason: str = Field(min_length=1)
    action_chosen: str
    rationale: str


class RefundInput(BaseModel):
    workflow_id: str
    request: DecisionRequest
    amount: Decimal = Field(gt=0)
    approved_by: str | None = None
    # Fixed by the workflow, so every retry writes the same record.
    issued_at: datetime


class RefundResult(BaseModel):
    request_id: str
    amount: Decimal
    providers: list[str]


class DecisionResult(BaseModel):
    request_id: str
    # What the model chose, verbatim (it may be outside the allowed set).
    action_chosen: str
    action_executed: DecisionAction
    refused_reason: str | None = None
    # Why a person handles the request, when it was escalated.
    escalation_reason: str | None = None
    approved_by: str | None = None
    # The channels that delivered the reply or the escalation.
    notified: list[str] = Field(default_factory=list)
    rationale: str
    risk: float
    model: str
    usage: TokenUsage


class DecisionStatus(BaseModel):
    """What the ``status`` query (and the ``approve_decision`` update) return."""

    request_id: str
    stage: DecisionStage
    decision: ModelDecision | None = None
    validation: Validation | None = None
    approval_deadline: datetime | None = None
    approval: Approval | None = None
    result: DecisionResult | None = None
