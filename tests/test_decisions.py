"""AIDecisionWorkflow on the real Temporal dev server, with a scripted model, real SQLite and
PostgreSQL, and a notifier that records what it was asked to send."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import ApplicationError

from nexpo_workflows.api.app import create_app
from nexpo_workflows.api.deps import GatewayState
from nexpo_workflows.config import Settings
from nexpo_workflows.decisions.activities import REFUNDS_DATASET, DecisionActivities
from nexpo_workflows.decisions.models import (
    ApprovalInput,
    DecisionRequest,
    DecisionResult,
    DecisionStage,
    DecisionStatus,
    RefundInput,
)
from nexpo_workflows.decisions.service import (
    ApprovalRefusedError,
    DecisionService,
    decision_workflow_id,
)
from nexpo_workflows.decisions.workflow import ESCALATION_UNDELIVERED
from nexpo_workflows.llm import LanguageModel, LLMRequestError
from nexpo_workflows.llm.offline import OfflineModel
from nexpo_workflows.notify import Notifier
from nexpo_workflows.notify.smtp import EmailNotifier
from nexpo_workflows.notify.webhook import WebhookNotifier
from nexpo_workflows.providers import DatasetRecord, enabled_providers
from nexpo_workflows.services import Services
from nexpo_workflows.worker import build_worker
from tests.conftest import API_KEY, run_cli
from tests.recording_notifier import RecordingNotifier
from tests.scripted_model import SCRIPTED_USAGE, ScriptedModel
from tests.servers.smtp import running_smtp
from tests.servers.webhook import running_webhook_receiver

OUTPUT = "ModelDecision"
WEBHOOK_SECRET = "decisions-webhook-secret"
LIMIT = 100.0
THRESHOLD = 0.5


@dataclass
class Lab:
    client: Client
    settings: Settings
    services: Services
    model: ScriptedModel
    notifier: RecordingNotifier

    @property
    def decisions(self) -> DecisionService:
        return DecisionService(self.client, self.settings.temporal_task_queue)

    async def decide(self, request: DecisionRequest, *answers: Any) -> DecisionResult:
        self.model.script(OUTPUT, *answers)
        handle = await self.decisions.start(request)
        return await handle.result()

    async def until(self, request_id: str, stage: DecisionStage) -> DecisionStatus:
        for _ in range(100):
            status = await self.decisions.status(request_id)
            if status.stage is stage:
                return status
            await asyncio.sleep(0.1)
        raise AssertionError(f"{request_id} never reached {stage}: {status}")

    def events(self) -> list[str]:
        return [notification.event for notification in self.notifier.sent]

    async def refunds(self, request_id: str) -> dict[str, list[DatasetRecord]]:
        return {
            name: await provider.get_records(REFUNDS_DATASET, [request_id])
            for name, provider in self.services.providers.items()
        }


@asynccontextmanager
async def decision_lab(
    client: Client,
    settings: Settings,
    model: LanguageModel | None = None,
    channels: dict[str, Notifier] | None = None,
) -> AsyncIterator[Lab]:
    """A worker whose channels are ``channels`` and, unless that names one, the recording
    channel."""
    scripted = ScriptedModel()
    notifier = RecordingNotifier()
    services = Services(
        settings=settings,
        client=client,
        providers=enabled_providers(settings),
        language_model=model or scripted,
        notifiers={"recording": notifier} if channels is None else channels,
    )
    try:
        async with build_worker(client, services):
            yield Lab(client, settings, services, scripted, notifier)
    finally:
        await services.close()


@pytest.fixture
def decision_settings(make_settings: Callable[..., Settings], postgres_url: str) -> Settings:
    return make_settings(
        enable_postgres=True,
        postgres_url=postgres_url,
        enable_sqlite=True,
        decision_refund_limit=LIMIT,
        decision_risk_threshold=THRESHOLD,
        decision_approval_timeout_seconds=60,
    )


@pytest.fixture
async def lab(client: Client, decision_settings: Settings) -> AsyncIterator[Lab]:
    async with decision_lab(client, decision_settings) as started:
        yield started


def support_request(**overrides: Any) -> DecisionRequest:
    values: dict[str, Any] = {
        "request_id": f"req-{uuid.uuid4().hex[:12]}",
        "customer_email": "ada@example.com",
        "subject": "My parcel arrived broken",
        "message": "The teapot I ordered arrived in pieces. What can you do?",
        "order_id": "A-1001",
        "order_amount": Decimal("80.00"),
    }
    values.update(overrides)
    return DecisionRequest(**values)


def answer(action: str, risk: float = 0.1, **parameters: Any) -> dict[str, Any]:
    return {
        "action": action,
        "parameters": parameters,
        "risk": risk,
        "rationale": f"chose {action} for the test",
    }


async def test_an_auto_reply_is_sent_to_the_customer(lab: Lab) -> None:
    request = support_request()
    result = await lab.decide(
        request,
        {"action": "auto_reply", "risk": 7, "rationale": "out of range: asked again"},
        answer("auto_reply", reply="Sorry! A new teapot is on its way."),
    )
    assert result.action_chosen == result.action_executed == "auto_reply"
    assert result.refused_reason is None
    assert result.escalation_reason is None
    assert result.rationale == "chose auto_reply for the test"
    assert result.usage.input_tokens == 2 * SCRIPTED_USAGE.input_tokens  # both attempts count

    [sent] = lab.notifier.sent
    assert sent.id == f"{decision_workflow_id(request.request_id)}:auto_reply"
    assert sent.recipients == [request.customer_email]
    assert sent.body == "Sorry! A new teapot is on its way."

    # The prompt names the allowed actions and the refund's bound, as the tool schema does.
    asked = lab.model.requests[0]
    assert asked.output_name == OUTPUT
    assert asked.system is not None
    for allowed in ("auto_reply", "escalate", "refund", "at most 80.00"):
        assert allowed in asked.system
    assert asked.output_schema is not None
    assert asked.output_schema["properties"]["action"]["enum"] == [
        "auto_reply",
        "escalate",
        "refund",
    ]
    assert request.message in asked.messages[0].content

    status = await lab.decisions.status(request.request_id)
    assert status.stage is DecisionStage.COMPLETED
    assert status.validation is not None
    assert status.validation.accepted
    assert status.result == result


async def test_an_action_outside_the_set_is_refused_and_escalated(lab: Lab) -> None:
    request = support_request()
    result = await lab.decide(request, answer("delete_account", risk=0.0))
    assert result.action_chosen == "delete_account"
    assert result.action_executed == "escalate"
    assert result.refused_reason is not None
    assert "not allowed" in result.refused_reason
    assert lab.events() == ["decision.escalated"]
    [escalation] = lab.notifier.sent
    assert escalation.data["action_chosen"] == "delete_account"
    assert result.refused_reason in escalation.data["reason"]
    assert await lab.refunds(request.request_id) == {"postgres": [], "sqlite": []}


async def test_a_missing_parameter_is_refused(lab: Lab) -> None:
    result = await lab.decide(support_request(), answer("auto_reply"))
    assert result.action_executed == "escalate"
    assert result.refused_reason == "auto_reply needs parameters.reply"


async def test_a_refund_above_the_limit_or_the_order_is_refused(lab: Lab) -> None:
    above_limit = support_request(order_amount=Decimal("500.00"))
    result = await lab.decide(above_limit, answer("refund", amount=LIMIT + 0.01))
    assert result.action_executed == "escalate"
    assert result.refused_reason is not None
    assert "above the allowed 100" in result.refused_reason

    above_order = support_request(order_amount=Decimal("20.00"))
    result = await lab.decide(above_order, answer("refund", amount=20.5))
    assert result.action_executed == "escalate"
    assert result.refused_reason is not None
    assert "above the allowed 20.00" in result.refused_reason

    # Without an order amount there is nothing to refund: refund is not even offered.
    no_order = support_request(order_id=None, order_amount=None)
    result = await lab.decide(no_order, answer("refund", amount=1))
    assert result.action_executed == "escalate"
    assert "refund" not in (lab.model.requests[-1].system or "").split("Allowed actions:")[1]

    assert lab.events() == ["decision.escalated"] * 3
    for request in (above_limit, above_order, no_order):
        assert await lab.refunds(request.request_id) == {"postgres": [], "sqlite": []}


async def test_a_refund_within_the_limit_is_recorded_once_in_every_database(lab: Lab) -> None:
    request = support_request()
    result = await lab.decide(request, answer("refund", risk=0.2, amount=35.5))
    assert result.action_executed == "refund"
    assert result.approved_by is None
    stored = await lab.refunds(request.request_id)
    assert set(stored) == {"postgres", "sqlite"}
    for records in stored.values():
        [record] = records
        assert record.id == request.request_id
        assert record.data["amount"] == "35.5"
        assert record.data["order_id"] == "A-1001"
    assert stored["postgres"] == stored["sqlite"]
    assert lab.events() == []

    # The activity retried (after a timeout that may have written) rewrites the same record.
    issue = DecisionActivities(lab.services).issue_refund
    retry = RefundInput(
        workflow_id=decision_workflow_id(request.request_id),
        request=request,
        amount=Decimal("35.5"),
        issued_at=datetime.fromisoformat(stored["sqlite"][0].data["issued_at"]),
    )
    await issue(retry)
    await issue(retry)
    assert await lab.refunds(request.request_id) == stored


async def test_a_risky_choice_runs_once_a_person_approves(lab: Lab) -> None:
    request = support_request()
    lab.model.script(OUTPUT, answer("refund", risk=0.9, amount=30))
    handle = await lab.decisions.start(request)
    waiting = await lab.until(request.request_id, DecisionStage.AWAITING_APPROVAL)
    assert waiting.validation is not None
    assert waiting.validation.requires_approval
    assert "risk 0.9 is above the threshold 0.5" in (waiting.validation.approval_reason or "")
    assert waiting.approval_deadline is not None
    assert await lab.refunds(request.request_id) == {"postgres": [], "sqlite": []}

    with pytest.raises(ApprovalRefusedError, match="an approver is required"):
        await lab.decisions.approve(request.request_id, ApprovalInput(approver=" ", approved=True))
    approved = await lab.decisions.approve(
        request.request_id, ApprovalInput(approver="grace", approved=True, comments="fine")
    )
    assert approved.stage is not DecisionStage.AWAITING_APPROVAL
    assert approved.approval is not None
    assert approved.approval.approver == "grace"

    result = await handle.result()
    assert result.action_executed == "refund"
    assert result.approved_by == "grace"
    assert [r.data["approved_by"] for r in (await lab.refunds(request.request_id))["sqlite"]] == [
        "grace"
    ]
    with pytest.raises(ApprovalRefusedError, match="not awaiting approval"):
        await lab.decisions.approve(request.request_id, ApprovalInput(approver="x", approved=True))


async def test_a_large_refund_waits_for_a_person_whatever_its_risk(lab: Lab) -> None:
    request = support_request()
    lab.model.script(OUTPUT, answer("refund", risk=0.0, amount=LIMIT / 2 + 1))
    handle = await lab.decisions.start(request)
    waiting = await lab.until(request.request_id, DecisionStage.AWAITING_APPROVAL)
    assert waiting.validation is not None
    assert "a refund above 50" in (waiting.validation.approval_reason or "")

    await lab.decisions.approve(
        request.request_id,
        ApprovalInput(approver="grace", approved=False, comments="replace it instead"),
    )
    result = await handle.result()
    assert result.action_chosen == "refund"
    assert result.action_executed == "escalate"
    assert result.escalation_reason == "rejected by grace: replace it instead"
    assert result.approved_by is None
    assert lab.events() == ["decision.escalated"]
    assert await lab.refunds(request.request_id) == {"postgres": [], "sqlite": []}


async def test_without_an_approval_in_time_the_request_is_escalated(
    client: Client, decision_settings: Settings
) -> None:
    settings = decision_settings.model_copy(update={"decision_approval_timeout_seconds": 1})
    async with decision_lab(client, settings) as lab:
        result = await lab.decide(
            support_request(), answer("auto_reply", risk=0.8, reply="Trust me.")
        )
    assert result.action_executed == "escalate"
    assert result.escalation_reason is not None
    assert result.escalation_reason.startswith("no approval within 1s")
    assert lab.events() == ["decision.escalated"]


async def test_an_approval_accepted_with_the_deadline_timer_wins(
    client: Client, decision_settings: Settings
) -> None:
    """The approval and the deadline's timer reach the workflow in one workflow task: no
    worker polls while the timer fires and the update is sent, so the next worker gets both."""
    settings = decision_settings.model_copy(update={"decision_approval_timeout_seconds": 2})
    request = support_request()
    async with decision_lab(client, settings) as lab:
        lab.model.script(OUTPUT, answer("auto_reply", risk=0.8, reply="Here is a new teapot."))
        handle = await lab.decisions.start(request)
        await lab.until(request.request_id, DecisionStage.AWAITING_APPROVAL)
    async with asyncio.timeout(30):
        async for event in handle.fetch_history_events(wait_new_event=True):
            if event.HasField("timer_fired_event_attributes"):
                break
    approval = asyncio.create_task(
        lab.decisions.approve(request.request_id, ApprovalInput(approver="grace", approved=True))
    )
    # The update is admitted by the server and waits for the next workflow task.
    await asyncio.sleep(1)
    assert not approval.done()
    async with decision_lab(client, settings) as second:
        status = await asyncio.wait_for(approval, 60)
        result = await handle.result()
    assert status.approval is not None
    assert status.approval.approver == "grace"
    assert result.escalation_reason is None
    assert (result.action_executed, result.approved_by) == ("auto_reply", "grace")
    assert second.events() == ["decision.auto_reply"]


async def test_an_approval_is_refused_while_the_model_decides(lab: Lab) -> None:
    lab.model.held[OUTPUT] = asyncio.Event()
    request = support_request()
    lab.model.script(OUTPUT, answer("escalate", reason="the customer asks for a manager"))
    handle = await lab.decisions.start(request)
    await asyncio.wait_for(lab.model.asked.wait(), 10)
    with pytest.raises(ApprovalRefusedError, match=r"not awaiting approval \(stage: deciding\)"):
        await lab.decisions.approve(request.request_id, ApprovalInput(approver="g", approved=True))
    lab.model.held[OUTPUT].set()
    result = await handle.result()
    # The model's own escalation needs no approval: a person handles it anyway.
    assert result.action_executed == "escalate"
    assert result.escalation_reason == "the customer asks for a manager"
    assert result.refused_reason is None


async def test_a_refused_model_request_fails_the_workflow_with_its_message(lab: Lab) -> None:
    request = support_request()
    lab.model.script(OUTPUT, LLMRequestError("prompt is too long: 250000 tokens"))
    handle = await lab.decisions.start(request)
    with pytest.raises(WorkflowFailureError) as failed:
        await handle.result()
    cause = failed.value.cause
    assert isinstance(cause, ApplicationError)
    assert cause.message == "prompt is too long: 250000 tokens"
    assert cause.type == "LLMRequestRefused"
    assert lab.notifier.sent == []


async def test_the_offline_model_runs_the_workflow_end_to_end(
    client: Client, decision_settings: Settings
) -> None:
    async with decision_lab(client, decision_settings, OfflineModel()) as lab:
        result = await lab.decide(support_request())
    assert result.model == "offline"
    assert result.action_chosen
    assert result.action_executed in ("auto_reply", "escalate", "refund")
    assert result.rationale


async def test_the_gateway_routes(lab: Lab) -> None:
    app = create_app(GatewayState(lab.services, lab.client, metrics_url=None))
    request = support_request()
    body = request.model_dump(mode="json")
    lab.model.script(OUTPUT, answer("auto_reply", risk=0.9, reply="Here is a voucher."))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://gw", headers={"X-API-Key": API_KEY}
    ) as http:
        started = await http.post("/api/decisions", json=body)
        assert started.status_code == 202, started.text
        accepted = started.json()
        assert accepted["workflowId"] == decision_workflow_id(request.request_id)
        assert accepted["statusUrl"].endswith(f"/api/decisions/{request.request_id}")
        assert (await http.post("/api/decisions", json=body)).status_code == 409

        await lab.until(request.request_id, DecisionStage.AWAITING_APPROVAL)
        refused = await http.post(
            f"/api/decisions/{request.request_id}/approval", json={"approver": "", "approved": True}
        )
        assert refused.status_code == 409
        assert "an approver is required" in refused.json()["detail"]
        approved = await http.post(
            f"/api/decisions/{request.request_id}/approval",
            json={"approver": "grace", "approved": True},
        )
        assert approved.status_code == 200, approved.text
        await lab.client.get_workflow_handle(accepted["workflowId"]).result()

        shown = (await http.get(f"/api/decisions/{request.request_id}")).json()
        assert shown["stage"] == "completed"
        assert shown["result"]["action_executed"] == "auto_reply"
        assert shown["result"]["approved_by"] == "grace"

        unknown = f"no-such-{uuid.uuid4().hex[:8]}"
        assert (await http.get(f"/api/decisions/{unknown}")).status_code == 404
        missing = await http.post(
            f"/api/decisions/{unknown}/approval", json={"approver": "g", "approved": True}
        )
        assert missing.status_code == 404
        invalid = await http.post("/api/decisions", json={**body, "order_amount": -1})
        assert invalid.status_code == 422


async def test_the_cli_commands(lab: Lab, cli: list[str], cli_env: dict[str, str]) -> None:
    request_id = f"cli-{uuid.uuid4().hex[:8]}"
    lab.model.script(OUTPUT, answer("refund", risk=0.7, amount=12.5))
    created = await run_cli(
        [
            *cli,
            "decisions",
            "create",
            "--request-id",
            request_id,
            "--customer-email",
            "ada@example.com",
            "--subject",
            "Broken teapot",
            "--message",
            "It arrived in pieces.",
            "--order-amount",
            "40",
        ],
        cli_env,
    )
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["stage"] == "awaiting_approval"

    approved = await run_cli(
        [*cli, "decisions", "approve", request_id, "--approver", "grace", "--comments", "ok"],
        cli_env,
    )
    assert approved.returncode == 0, approved.stderr
    await lab.client.get_workflow_handle(decision_workflow_id(request_id)).result()

    shown = await run_cli([*cli, "decisions", "show", request_id], cli_env)
    assert shown.returncode == 0, shown.stderr
    result = json.loads(shown.stdout)["result"]
    assert (result["action_executed"], result["approved_by"]) == ("refund", "grace")

    again = await run_cli(
        [*cli, "decisions", "approve", request_id, "--approver", "grace", "--reject"], cli_env
    )
    assert again.returncode == 2
    assert "not awaiting approval" in again.stderr

    refunded = await lab.refunds(request_id)
    assert [r.data["amount"] for r in refunded["postgres"]] == ["12.5"]
    assert datetime.fromisoformat(refunded["postgres"][0].data["issued_at"]) <= datetime.now(UTC)


def webhook(url: str) -> WebhookNotifier:
    # A short backoff inside one attempt keeps the test fast; the activity's retries are real.
    return WebhookNotifier(
        [url], SecretStr(WEBHOOK_SECRET), timeout_seconds=5, backoff_seconds=0.01
    )


async def test_a_channel_that_refuses_for_good_is_not_retried_nor_the_others_resent(
    client: Client, decision_settings: Settings
) -> None:
    """Email with no recipient (NOTIFY_EMAIL_TO is empty) and a webhook answering 400 refuse
    the escalation for good: each is asked once, and the channel that delivered is not sent
    it again."""
    request = support_request()
    recording = RecordingNotifier()
    async with (
        running_smtp() as smtp,
        running_webhook_receiver(WEBHOOK_SECRET, status=400) as receiver,
    ):
        settings = decision_settings.model_copy(
            update={"smtp_host": smtp.host, "smtp_port": smtp.port}
        )
        channels: dict[str, Notifier] = {
            "email": EmailNotifier.from_settings(settings),
            "webhook": webhook(receiver.url()),
            "recording": recording,
        }
        async with decision_lab(client, settings, channels=channels) as lab, asyncio.timeout(60):
            result = await lab.decide(request, answer("escalate", reason="a person must look"))
    assert result.action_executed == "escalate"
    assert result.notified == ["recording"]
    assert [n.id for n in recording.sent] == [f"decision-{request.request_id}:escalation"]
    assert [d.status for d in receiver.requests] == [400]
    assert smtp.messages == []


async def test_a_channel_retried_does_not_resend_on_the_channel_that_delivered(
    client: Client, decision_settings: Settings
) -> None:
    """The webhook is down for the first activity attempt (its three tries in it answer 503)
    and takes the reply on the second; the recording channel delivered once, and only once."""
    request = support_request()
    recording = RecordingNotifier()
    async with running_webhook_receiver(WEBHOOK_SECRET, fail_first=4) as receiver:
        channels: dict[str, Notifier] = {"webhook": webhook(receiver.url()), "recording": recording}
        async with decision_lab(client, decision_settings, channels=channels) as lab:
            result = await lab.decide(
                request, answer("auto_reply", reply="A new one is on its way.")
            )
    assert (result.action_executed, result.notified) == ("auto_reply", ["webhook", "recording"])
    assert recording.events() == ["decision.auto_reply"]
    assert [d.status for d in receiver.requests] == [503, 503, 503, 503, 200]


async def test_an_escalation_no_channel_takes_fails_the_run_instead_of_retrying_for_ever(
    client: Client, decision_settings: Settings
) -> None:
    request = support_request()
    async with running_webhook_receiver(WEBHOOK_SECRET, status=404) as receiver:
        channels: dict[str, Notifier] = {"webhook": webhook(receiver.url())}
        async with decision_lab(client, decision_settings, channels=channels) as lab:
            lab.model.script(OUTPUT, answer("escalate", reason="a person must look"))
            handle = await lab.decisions.start(request)
            with pytest.raises(WorkflowFailureError) as failed:
                await asyncio.wait_for(handle.result(), 60)
    cause = failed.value.cause
    assert isinstance(cause, ApplicationError)
    assert cause.type == ESCALATION_UNDELIVERED
    assert "webhook" in cause.message
    assert "answered 404" in cause.message
    assert [d.status for d in receiver.requests] == [404]
