"""AIContentPipelineWorkflow on real Temporal servers, publishing to real SQLite and
PostgreSQL: the offline model for the plain path, a scripted one for the branches, the
time-skipping server for the review deadline, the gateway and the CLI."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import (
    Client,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowUpdateFailedError,
)
from temporalio.exceptions import ApplicationError, CancelledError
from temporalio.testing import WorkflowEnvironment

from nexpo_workflows.config import Settings
from nexpo_workflows.content.models import (
    ContentRequest,
    ContentResult,
    Decision,
    HumanReview,
    PipelineStage,
    PipelineStatus,
    new_content_id,
)
from nexpo_workflows.content.workflow import (
    NOT_AWAITING_REVIEW,
    PUBLISH_FAILED,
    SUBMIT_REVIEW,
    AIContentPipelineWorkflow,
)
from nexpo_workflows.llm import LanguageModel, LLMRequestError
from nexpo_workflows.llm.offline import OfflineModel
from nexpo_workflows.providers import DatabaseProvider, DatasetRecord, enabled_providers
from nexpo_workflows.services import Services
from nexpo_workflows.worker import build_worker
from tests.conftest import TemporalServer, run_cli, time_skipping_server
from tests.faults import FaultyProvider
from tests.recording_notifier import RecordingNotifier
from tests.scripted_model import SCRIPTED_USAGE, ScriptedModel
from tests.test_api import gateway

OPS = "ops@example.com"
REVIEWER = "rev@example.com"


@dataclass
class Pipeline:
    client: Client
    task_queue: str
    providers: dict[str, DatabaseProvider]
    notifier: RecordingNotifier

    async def start(
        self, request: ContentRequest
    ) -> WorkflowHandle[AIContentPipelineWorkflow, ContentResult]:
        return await self.client.start_workflow(
            AIContentPipelineWorkflow.run, request, id=new_content_id(), task_queue=self.task_queue
        )


@asynccontextmanager
async def pipeline_worker(
    client: Client, settings: Settings, model: LanguageModel | None = None, **faults: Any
) -> AsyncIterator[Pipeline]:
    providers = enabled_providers(settings)
    for name, fault in faults.items():
        providers[name] = FaultyProvider(providers[name], **fault)
    notifier = RecordingNotifier()
    services = Services(
        settings=settings,
        client=client,
        providers=providers,
        language_model=model or OfflineModel(),
        notifiers={notifier.name: notifier},
    )
    try:
        async with build_worker(client, services):
            yield Pipeline(client, settings.temporal_task_queue, providers, notifier)
    finally:
        await services.close()


@pytest.fixture
def content_settings(make_settings: Callable[..., Settings], postgres_url: str) -> Settings:
    return make_settings(
        enable_postgres=True, postgres_url=postgres_url, enable_sqlite=True, notify_email_to=[OPS]
    )


@pytest.fixture
def dev_client(temporal_server: TemporalServer) -> Client:
    if temporal_server.time_skipping:
        pytest.skip("the time-skipping server does not support updates")
    return temporal_server.client


async def stored(settings: Settings, content_id: str) -> dict[str, DatasetRecord | None]:
    """What each database holds for ``content_id``, read over new connections."""
    readers = enabled_providers(settings)
    try:
        found = {name: await p.get_records("content", [content_id]) for name, p in readers.items()}
    finally:
        for provider in readers.values():
            await provider.close()
    return {name: records[0] if records else None for name, records in found.items()}


async def reaches(
    handle: WorkflowHandle[AIContentPipelineWorkflow, Any], stage: PipelineStage, revision: int = 0
) -> PipelineStatus:
    async with asyncio.timeout(30):
        while True:
            status = await handle.query(AIContentPipelineWorkflow.status)
            if status.stage is stage and status.revision == revision:
                return status
            await asyncio.sleep(0.05)


def microseconds(at: datetime) -> int:
    return (at - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def draft(n: int) -> dict[str, Any]:
    return {"title": f"Draft {n}", "body": f"The body of draft {n}.", "tags": ["temporal"]}


def verdict(decision: Decision, comments: str = "") -> dict[str, Any]:
    return {"decision": decision.value, "comments": comments}


async def failure_of(handle: WorkflowHandle[Any, Any]) -> ApplicationError:
    with pytest.raises(WorkflowFailureError) as failed:
        await handle.result()
    cause = failed.value.cause
    assert isinstance(cause, ApplicationError), repr(cause)
    return cause


async def test_an_ai_approved_draft_is_published_to_every_database(
    client: Client, content_settings: Settings
) -> None:
    async with pipeline_worker(client, content_settings) as pipeline:
        handle = await pipeline.start(ContentRequest(topic="Durable timers", audience="engineers"))
        result = await handle.result()
        status = await handle.query(AIContentPipelineWorkflow.status)

    assert result.status == "published"
    assert result.published_to == ["postgres", "sqlite"]
    assert result.draft is not None
    assert result.revisions == 0
    [review] = result.reviews
    assert (review.reviewer, review.decision) == ("ai:offline", Decision.APPROVE)
    assert result.usage.input_tokens > 0
    assert status.stage is PipelineStage.PUBLISHED
    assert status.reviews == result.reviews

    records = await stored(content_settings, handle.id)
    assert set(records) == {"postgres", "sqlite"}
    for record in records.values():
        assert record is not None
        assert record.version == microseconds(review.at)
        assert record.data["title"] == result.draft.title
        assert record.data["tags"] == result.draft.tags
        assert record.data["topic"] == "Durable timers"
        assert record.data["approved_by"] == "ai:offline"

    [notice] = pipeline.notifier.sent
    assert notice.id == f"{handle.id}:content.published"
    assert notice.event == "content.published"
    assert notice.recipients == [OPS]
    assert notice.data["published_to"] == ["postgres", "sqlite"]
    assert result.notified == ["recording"]


async def test_changes_requested_then_approved_publishes_the_second_draft(
    client: Client, content_settings: Settings
) -> None:
    model = ScriptedModel(
        {
            "Draft": [draft(1), draft(2)],
            "ReviewVerdict": [
                verdict(Decision.REQUEST_CHANGES, "Shorter, and cite the guide."),
                verdict(Decision.APPROVE, "Good."),
            ],
        }
    )
    async with pipeline_worker(client, content_settings, model) as pipeline:
        handle = await pipeline.start(ContentRequest(topic="Sagas"))
        result = await handle.result()

    assert result.status == "published"
    assert result.revisions == 1
    assert [(r.decision, r.revision) for r in result.reviews] == [
        (Decision.REQUEST_CHANGES, 0),
        (Decision.APPROVE, 1),
    ]
    assert result.draft is not None
    assert result.draft.title == "Draft 2"
    assert result.usage.input_tokens == 4 * SCRIPTED_USAGE.input_tokens
    assert result.usage.output_tokens == 4 * SCRIPTED_USAGE.output_tokens
    first, second = (r.messages[-1].content for r in model.requests_for("Draft"))
    assert "Shorter, and cite the guide." not in first
    assert "Shorter, and cite the guide." in second
    assert "Draft 1" in second  # the draft the reviewer saw
    records = await stored(content_settings, handle.id)
    assert all(r is not None and r.data["revision"] == 1 for r in records.values())


@pytest.mark.parametrize(
    ("verdicts", "max_revisions", "reason"),
    [
        ([verdict(Decision.REJECT, "Off topic.")], 3, "rejected by ai:scripted: Off topic."),
        (
            [verdict(Decision.REQUEST_CHANGES, "More.")] * 2,
            1,
            "changes still requested after 1 revisions",
        ),
    ],
    ids=["rejected", "revision_limit"],
)
async def test_a_rejected_draft_is_published_nowhere(
    client: Client,
    make_settings: Callable[..., Settings],
    postgres_url: str,
    verdicts: list[dict[str, Any]],
    max_revisions: int,
    reason: str,
) -> None:
    settings = make_settings(
        enable_postgres=True,
        postgres_url=postgres_url,
        enable_sqlite=True,
        content_max_revisions=max_revisions,
    )
    model = ScriptedModel({"Draft": [draft(1), draft(2)], "ReviewVerdict": verdicts})
    request = ContentRequest(topic="Sagas", recipients=["author@example.com"])
    async with pipeline_worker(client, settings, model) as pipeline:
        handle = await pipeline.start(request)
        result = await handle.result()

    assert result.status == "rejected"
    assert result.reason is not None
    assert reason in result.reason
    assert result.revisions == len(verdicts) - 1
    assert result.published_to == []
    assert await stored(settings, handle.id) == {"postgres": None, "sqlite": None}
    [notice] = pipeline.notifier.sent
    assert (notice.id, notice.recipients) == (
        f"{handle.id}:content.rejected",
        ["author@example.com"],
    )


async def test_the_validator_refuses_a_review_when_none_is_awaited(
    dev_client: Client, content_settings: Settings
) -> None:
    release = asyncio.Event()
    model = ScriptedModel(
        {"Draft": [draft(1)], "ReviewVerdict": [verdict(Decision.APPROVE)]},
        held={"ReviewVerdict": release},
    )
    async with pipeline_worker(dev_client, content_settings, model) as pipeline:
        handle = await pipeline.start(ContentRequest(topic="Sagas"))
        status = await reaches(handle, PipelineStage.REVIEWING)
        assert status.draft is not None
        assert status.draft.title == "Draft 1"
        assert status.reviews == []
        with pytest.raises(WorkflowUpdateFailedError) as refused:
            await handle.execute_update(
                SUBMIT_REVIEW,
                HumanReview(reviewer="ada@example.com", decision="approve"),
                result_type=PipelineStatus,
            )
        cause = refused.value.cause
        assert isinstance(cause, ApplicationError)
        assert cause.type == NOT_AWAITING_REVIEW
        assert "stage: reviewing" in cause.message
        release.set()
        result = await handle.result()
    assert result.status == "published"
    assert [r.reviewer for r in result.reviews] == ["ai:scripted"]


async def test_a_human_review_through_the_gateway(
    dev_client: Client, content_settings: Settings
) -> None:
    services = Services(settings=content_settings, client=dev_client)
    async with (
        pipeline_worker(dev_client, content_settings) as pipeline,
        gateway(services, dev_client) as http,
    ):
        invalid = await http.post("/api/content", json={"topic": "   "})
        assert invalid.status_code == 422, invalid.text
        assert "topic must not be blank" in invalid.text

        started = await http.post(
            "/api/content",
            json={"topic": "Sagas", "review_mode": "human", "reviewers": [REVIEWER]},
        )
        assert started.status_code == 202, started.text
        content_id = started.json()["workflowId"]
        assert content_id.startswith("content-")
        assert started.json()["statusUrl"].endswith(f"/api/content/{content_id}")
        handle = dev_client.get_workflow_handle_for(AIContentPipelineWorkflow.run, content_id)
        await reaches(handle, PipelineStage.AWAITING_REVIEW)
        shown = (await http.get(f"/api/content/{content_id}")).json()
        assert shown["stage"] == "awaiting_review"
        assert shown["draft"]["title"]

        review_url = f"/api/content/{content_id}/review"
        for body, reason in [
            ({"reviewer": "ada@example.com", "decision": "maybe"}, "decision must be one of"),
            ({"reviewer": "  ", "decision": "approve"}, "a reviewer is required"),
        ]:
            refused = await http.post(review_url, json=body)
            assert refused.status_code == 400, refused.text
            assert reason in refused.json()["detail"]

        approved = await http.post(
            review_url,
            json={"reviewer": "ada@example.com", "decision": "approve", "comments": "Ship it."},
        )
        assert approved.status_code == 200, approved.text
        assert approved.json()["stage"] in ("publishing", "notifying", "published")
        assert approved.json()["reviews"][-1]["reviewer"] == "ada@example.com"
        result = await handle.result()

        late = await http.post(review_url, json={"reviewer": "bob", "decision": "reject"})
        assert late.status_code == 409, late.text
        final = (await http.get(f"/api/content/{content_id}")).json()
        assert final["stage"] == "published"
        assert [r["decision"] for r in final["reviews"]] == ["approve"]
        assert (await http.get("/api/content/content-nope")).status_code == 404
        missing = await http.post("/api/content/content-nope/review", json=body)
        assert missing.status_code == 404

    assert result.status == "published"
    assert result.reviews[0].comments == "Ship it."
    records = await stored(content_settings, content_id)
    assert all(r is not None for r in records.values())
    assert {r.data["approved_by"] for r in records.values() if r} == {"ada@example.com"}
    requested, published = pipeline.notifier.sent
    assert (requested.id, requested.recipients) == (
        f"{content_id}:content.review_requested:r0",
        [REVIEWER],
    )
    assert (published.event, published.recipients) == ("content.published", [OPS])


@pytest.fixture(scope="module")
async def time_skipping() -> AsyncIterator[WorkflowEnvironment]:
    async with time_skipping_server() as started:
        yield started


@pytest.mark.parametrize("default", ["approve", "reject"])
async def test_the_review_deadline_escalates_then_applies_the_default(
    time_skipping: WorkflowEnvironment, tmp_path: Path, default: str
) -> None:
    settings = Settings(
        _env_file=None,
        data_dir=tmp_path / "data",
        metrics_bind_address="",
        temporal_task_queue=f"content-{uuid.uuid4()}",
        enable_sqlite=True,
        notify_email_to=[OPS],
        content_review_mode="human",
        content_review_timeout_seconds=3600,
        content_review_default=default,
    )
    request = ContentRequest(topic="Timers", reviewers=[REVIEWER])
    async with pipeline_worker(time_skipping.client, settings) as pipeline:
        handle = await pipeline.start(request)
        result = await handle.result()

    deadline = result.reviews[-1]
    assert (deadline.reviewer, deadline.decision) == ("deadline", Decision(default))
    assert "no review within 3600s" in deadline.comments
    outcome = "content.published" if default == "approve" else "content.rejected"
    assert pipeline.notifier.events() == [
        "content.review_requested",
        "content.review_escalated",
        outcome,
    ]
    escalation = pipeline.notifier.sent[1]
    assert escalation.id == f"{handle.id}:content.review_escalated"
    assert escalation.recipients == [OPS, REVIEWER]
    assert f"({default})" in escalation.body
    [record] = (await stored(settings, handle.id)).values()
    if default == "approve":
        assert result.status == "published"
        assert record is not None
        assert record.data["approved_by"] == "deadline"
    else:
        assert result.status == "rejected"
        assert record is None


async def test_a_failed_publish_leaves_the_content_nowhere(
    client: Client, content_settings: Settings
) -> None:
    async with pipeline_worker(client, content_settings, sqlite={"upsert_fails": True}) as pipeline:
        handle = await pipeline.start(ContentRequest(topic="Sagas"))
        failure = await failure_of(handle)
        status = await handle.query(AIContentPipelineWorkflow.status)
        faulty = pipeline.providers["sqlite"]

    assert failure.type == PUBLISH_FAILED
    result = ContentResult.model_validate(failure.details[0])
    assert result.status == "publish_failed"
    assert result.published_to == []
    assert result.reason is not None
    assert "injected failure after the records write" in result.reason
    assert [(o.provider, o.status) for o in result.providers] == [
        ("postgres", "compensated"),
        ("sqlite", "failed"),
    ]
    assert isinstance(faulty, FaultyProvider)
    assert faulty.upsert_calls == 4  # the publish retry's bound
    # Both writes landed (sqlite's before it failed) and both were undone.
    assert await stored(content_settings, handle.id) == {"postgres": None, "sqlite": None}
    assert status.stage is PipelineStage.FAILED
    assert pipeline.notifier.sent == []


async def test_a_pipeline_cancelled_while_publishing_undoes_every_write(
    client: Client, content_settings: Settings
) -> None:
    async with pipeline_worker(client, content_settings, sqlite={}) as pipeline:
        faulty = pipeline.providers["sqlite"]
        assert isinstance(faulty, FaultyProvider)
        faulty.upsert_down = True  # retried: PostgreSQL is written, SQLite keeps failing
        handle = await pipeline.start(ContentRequest(topic="Sagas"))
        async with asyncio.timeout(30):
            while True:
                if (await stored(content_settings, handle.id))["postgres"] is not None:
                    break
                await asyncio.sleep(0.05)
        await handle.cancel()
        with pytest.raises(WorkflowFailureError) as failed:
            await handle.result()
    assert isinstance(failed.value.cause, CancelledError)
    assert await stored(content_settings, handle.id) == {"postgres": None, "sqlite": None}


@pytest.mark.parametrize(
    ("answers", "kind", "message"),
    [
        (
            [LLMRequestError("prompt is too long: 250000 tokens > 200000 maximum", status=400)],
            "LLMRequestRefused",
            "prompt is too long: 250000 tokens > 200000 maximum",
        ),
        ([{"title": ""}] * 3, "InvalidModelAnswer", "did not match Draft after 3 attempts"),
    ],
    ids=["refused", "invalid_answer"],
)
async def test_a_non_retryable_model_error_fails_the_pipeline_with_its_message(
    client: Client,
    content_settings: Settings,
    answers: list[dict[str, Any] | Exception],
    kind: str,
    message: str,
) -> None:
    model = ScriptedModel({"Draft": answers})
    async with pipeline_worker(client, content_settings, model) as pipeline:
        handle = await pipeline.start(ContentRequest(topic="Sagas"))
        failure = await failure_of(handle)
        status = await handle.query(AIContentPipelineWorkflow.status)
    assert failure.type == kind
    assert message in failure.message
    assert failure.non_retryable
    assert len(model.requests) == len(answers)  # not retried by Temporal
    assert status.stage is PipelineStage.FAILED
    assert status.draft is None


async def test_the_cli_creates_reviews_and_shows_pipelines(
    dev_client: Client,
    make_settings: Callable[..., Settings],
    cli: list[str],
    cli_env: dict[str, str],
) -> None:
    settings = make_settings()
    content = [*cli, "content"]
    async with pipeline_worker(dev_client, settings):
        blank = await run_cli([*content, "create", "--topic", "  "], cli_env)
        assert blank.returncode == 2
        assert "topic must not be blank" in blank.stderr

        published = await run_cli([*content, "create", "--topic", "Durable timers"], cli_env)
        assert published.returncode == 0, published.stderr
        assert json.loads(published.stdout)["status"] == "published"
        assert "started content-" in published.stderr

        started = await run_cli(
            [*content, "create", "--topic", "Sagas", "--review", "human", "--no-wait"], cli_env
        )
        assert started.returncode == 0, started.stderr
        content_id = started.stdout.strip()
        handle = dev_client.get_workflow_handle_for(AIContentPipelineWorkflow.run, content_id)
        await reaches(handle, PipelineStage.AWAITING_REVIEW)

        review = [*content, "review", content_id, "--reviewer", "ada@example.com"]
        refused = await run_cli([*review, "--decision", "maybe"], cli_env)
        assert refused.returncode == 2
        assert "decision must be one of" in refused.stderr

        changes = await run_cli(
            [*review, "--decision", "request-changes", "--comments", "More examples."], cli_env
        )
        assert changes.returncode == 0, changes.stderr
        assert json.loads(changes.stdout)["reviews"][0]["decision"] == "request_changes"
        await reaches(handle, PipelineStage.AWAITING_REVIEW, revision=1)

        approved = await run_cli([*review, "--decision", "approve"], cli_env)
        assert approved.returncode == 0, approved.stderr
        result = await handle.result()
        assert (result.status, result.revisions) == ("published", 1)

        shown = await run_cli([*content, "show", content_id], cli_env)
        assert shown.returncode == 0, shown.stderr
        status = json.loads(shown.stdout)
        assert status["stage"] == "published"
        assert [r["decision"] for r in status["reviews"]] == ["request_changes", "approve"]
        assert status["reviews"][0]["comments"] == "More examples."

        unknown = await run_cli([*content, "show", "content-nope"], cli_env)
        assert unknown.returncode == 1
        assert "no pipeline content-nope" in unknown.stderr
