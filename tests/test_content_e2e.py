"""The content pipeline end to end with every real part that can exist here: the anthropic SDK
against a local Messages API, publishing to PostgreSQL and SQLite, an email to a real SMTP
server and a signed webhook to a real receiver."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import ApplicationError

from nexpo_workflows.config import Settings
from nexpo_workflows.content.models import ContentRequest, ContentResult, new_content_id
from nexpo_workflows.content.workflow import AIContentPipelineWorkflow
from nexpo_workflows.services import Services
from nexpo_workflows.worker import build_worker
from tests.conftest import CREDENTIALS_IN_USE, SMTP_PASSWORD, WEBHOOK_SECRET
from tests.servers.anthropic import (
    RecordedRequest,
    Reply,
    invalid_request,
    rate_limited,
    running_anthropic,
    tool_use,
)
from tests.servers.smtp import running_smtp
from tests.servers.webhook import running_webhook_receiver
from tests.test_content import pipeline_worker, stored

ANTHROPIC_KEY = f"sk-ant-e2e-{uuid.uuid4().hex}"
CREDENTIALS_IN_USE.add(ANTHROPIC_KEY)
OPS = "ops@example.com"


def claude(request: RecordedRequest) -> Reply:
    """Answers as Claude would: a draft for the Draft tool, an approval for the review."""
    if request.tool_name == "Draft":
        return tool_use(
            {"title": "Durable sagas", "body": "Every write or none.", "tags": ["temporal"]}
        )
    return tool_use({"decision": "approve", "comments": "ready to publish"})


async def run_pipeline(client: Client, settings: Settings) -> ContentResult:
    services = Services.from_settings(settings, client)
    try:
        async with build_worker(client, services):
            return await client.execute_workflow(
                AIContentPipelineWorkflow.run,
                ContentRequest(topic="Sagas on Temporal", review_mode="ai"),
                id=new_content_id(),
                task_queue=settings.temporal_task_queue,
            )
    finally:
        await services.close()


@pytest.fixture
def e2e_settings(
    make_settings: Callable[..., Settings], postgres_url: str
) -> Callable[..., Settings]:
    def make(anthropic_url: str, **extra: object) -> Settings:
        return make_settings(
            enable_postgres=True,
            postgres_url=postgres_url,
            enable_sqlite=True,
            anthropic_api_key=ANTHROPIC_KEY,
            anthropic_base_url=anthropic_url,
            notify_email_to=[OPS],
            **extra,
        )

    return make


async def test_claude_429_then_success_publishes_emails_and_signs_webhooks(
    client: Client, e2e_settings: Callable[..., Settings]
) -> None:
    async with (
        running_anthropic() as fake,
        running_smtp(users={"nexpo": SMTP_PASSWORD}) as smtp,
        running_webhook_receiver(WEBHOOK_SECRET) as receiver,
    ):
        fake.script(rate_limited(retry_after=1))
        fake.respond_with(claude)
        settings = e2e_settings(
            fake.url,
            smtp_host=smtp.host,
            smtp_port=smtp.port,
            smtp_username="nexpo",
            smtp_password=SMTP_PASSWORD,
            webhook_urls=[receiver.url()],
            webhook_secret=WEBHOOK_SECRET,
        )
        result = await run_pipeline(client, settings)
    assert result.status == "published"
    # The first call was rate limited and retried; then one draft and one review.
    assert [r.tool_name for r in fake.requests] == ["Draft", "Draft", "ReviewVerdict"]
    assert all(r.api_key == ANTHROPIC_KEY for r in fake.requests)
    held = await stored(settings, result.content_id)
    assert {name: record is not None for name, record in held.items()} == {
        "postgres": True,
        "sqlite": True,
    }
    assert held["postgres"] is not None
    assert held["postgres"].data["title"] == "Durable sagas"
    [mail] = [m for m in smtp.messages if m.message["X-Nexpo-Event"] == "content.published"]
    assert mail.rcpt_tos == [OPS]
    assert mail.login == "nexpo"
    assert "Durable sagas" in mail.message["Subject"] + mail.message.get_content()
    published = [
        d for d in receiver.delivered if json.loads(d.body)["event"] == "content.published"
    ]
    assert len(published) == 1
    assert published[0].verified


async def test_a_non_retryable_400_fails_the_pipeline_with_the_api_message(
    client: Client, e2e_settings: Callable[..., Settings]
) -> None:
    async with running_anthropic() as fake:
        fake.script(invalid_request("messages: text content blocks must be non-empty"))
        settings = e2e_settings(fake.url)
        with pytest.raises(WorkflowFailureError) as failure:
            await run_pipeline(client, settings)
    assert "text content blocks must be non-empty" in str(failure.value.cause)
    assert len(fake.requests) == 1  # not retried


@pytest.fixture
def every_provider(
    make_settings: Callable[..., Settings], provider_servers: dict[str, Any]
) -> Settings:
    return make_settings(**provider_servers)


EVERY_PROVIDER = {"postgres", "mongodb", "cosmosdb", "supabase", "sqlite"}


async def test_published_content_is_in_every_real_provider(
    client: Client, every_provider: Settings
) -> None:
    async with pipeline_worker(client, every_provider) as pipeline:
        handle = await pipeline.start(ContentRequest(topic="Sagas everywhere"))
        result = await handle.result()
    assert result.status == "published"
    held = await stored(every_provider, handle.id)
    assert set(held) == EVERY_PROVIDER
    assert all(record is not None for record in held.values()), held


async def test_one_failing_publish_leaves_the_content_in_no_provider(
    client: Client, every_provider: Settings
) -> None:
    # Supabase writes, then answers with an error every time: every write is undone.
    async with pipeline_worker(client, every_provider, supabase={"upsert_fails": True}) as pipeline:
        handle = await pipeline.start(ContentRequest(topic="Sagas nowhere"))
        with pytest.raises(WorkflowFailureError) as failure:
            await handle.result()
    cause = failure.value.cause
    assert isinstance(cause, ApplicationError)
    assert ContentResult.model_validate(cause.details[0]).status == "publish_failed"
    held = await stored(every_provider, handle.id)
    assert set(held) == EVERY_PROVIDER
    assert held == dict.fromkeys(EVERY_PROVIDER)
