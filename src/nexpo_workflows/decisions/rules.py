"""What the model may choose, and the deterministic check of what it chose.

The prompt and the workflow both read these rules, so the model is told exactly the bounds
its answer is then held to. Pure functions: the workflow calls them (imported passed through).
"""

from __future__ import annotations

from decimal import Decimal

from nexpo_workflows.config import Settings
from nexpo_workflows.decisions.models import (
    DecisionAction,
    DecisionPolicy,
    DecisionRequest,
    ModelDecision,
    Validation,
)

# The model rates its own risk, and a customer's message can talk it down; so a refund above
# this share of the limit waits for a person whatever risk it is given.
UNAPPROVED_REFUND_SHARE = Decimal("0.5")
CENT = Decimal("0.01")


def policy_from_settings(settings: Settings, channels: list[str]) -> DecisionPolicy:
    limit = Decimal(str(settings.decision_refund_limit))
    return DecisionPolicy(
        refund_limit=limit,
        approval_refund_above=limit * UNAPPROVED_REFUND_SHARE,
        risk_threshold=settings.decision_risk_threshold,
        approval_timeout_seconds=settings.decision_approval_timeout_seconds,
        channels=channels,
    )


def refund_ceiling(request: DecisionRequest, policy: DecisionPolicy) -> Decimal | None:
    """The largest refund allowed for this request; None when there is nothing to refund."""
    if request.order_amount is None or request.order_amount <= 0 or policy.refund_limit <= 0:
        return None
    return min(request.order_amount, policy.refund_limit)


def allowed_actions(request: DecisionRequest, policy: DecisionPolicy) -> list[DecisionAction]:
    actions = [DecisionAction.AUTO_REPLY, DecisionAction.ESCALATE]
    if refund_ceiling(request, policy) is not None:
        actions.append(DecisionAction.REFUND)
    return actions


def refund_amount(decision: ModelDecision) -> Decimal | None:
    amount = decision.parameters.amount
    # Through str: the decimal the model wrote, not the float's binary expansion.
    return None if amount is None else Decimal(str(amount))


def _refusal(
    decision: ModelDecision, request: DecisionRequest, policy: DecisionPolicy
) -> str | None:
    allowed = allowed_actions(request, policy)
    if decision.action not in allowed:
        return (
            f"action {decision.action!r} is not allowed here; allowed: "
            f"{', '.join(action.value for action in allowed)}"
        )
    action = DecisionAction(decision.action)
    parameters = decision.parameters
    if action is DecisionAction.AUTO_REPLY and not (parameters.reply or "").strip():
        return "auto_reply needs parameters.reply"
    if action is DecisionAction.ESCALATE and not (parameters.reason or "").strip():
        return "escalate needs parameters.reason"
    if action is DecisionAction.REFUND:
        amount = refund_amount(decision)
        ceiling = refund_ceiling(request, policy)
        assert ceiling is not None  # refund is allowed only with one
        if amount is None:
            return "refund needs parameters.amount"
        if amount <= 0 or amount != amount.quantize(CENT):
            return f"refund amount {amount} is not a positive amount in cents"
        if amount > ceiling:
            return (
                f"refund of {amount} is above the allowed {ceiling} (the order's amount "
                f"{request.order_amount}, the limit {policy.refund_limit})"
            )
    return None


def validate(
    decision: ModelDecision, request: DecisionRequest, policy: DecisionPolicy
) -> Validation:
    refused = _refusal(decision, request, policy)
    if refused is not None:
        return Validation(accepted=False, reason=refused)
    # Escalating already hands the request to a person: there is nothing to approve.
    if decision.action == DecisionAction.ESCALATE:
        return Validation(accepted=True)
    reasons = []
    if decision.risk > policy.risk_threshold:
        reasons.append(f"risk {decision.risk:g} is above the threshold {policy.risk_threshold:g}")
    amount = refund_amount(decision)
    if (
        decision.action == DecisionAction.REFUND
        and amount is not None
        and amount > policy.approval_refund_above
    ):
        reasons.append(f"a refund above {policy.approval_refund_above} needs a person")
    return Validation(
        accepted=True,
        requires_approval=bool(reasons),
        approval_reason="; ".join(reasons) or None,
    )
