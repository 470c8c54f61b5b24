"""The language models: the real ``anthropic`` SDK against a local Messages API, and offline.

Only the far end is a stand-in (tests/servers/anthropic.py): the SDK, its HTTP client, the
error mapping and, at the end, Temporal's retries of an AI activity are all real.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from enum import StrEnum

from pydantic import BaseModel, Field
from temporalio import activity, workflow
from temporalio.common import RetryPolicy

# This module defines a workflow, so the sandbox re-imports it for each run: the rest is
# passed through rather than imported again inside the sandbox.
with workflow.unsafe.imports_passed_through():
    import pytest
    from temporalio.client import Client, WorkflowFailureError
    from temporalio.exceptions import ActivityError, ApplicationError

    from nexpo_workflows.config import Settings
    from nexpo_workflows.llm import (
        ChatMessage,
        LLMRequest,
        LLMRequestError,
        LLMUnavailableError,
        configured_model,
    )
    from nexpo_workflows.llm.anthropic import AnthropicModel
    from nexpo_workflows.llm.calls import (
        INVALID_MODEL_ANSWER,
        LLM_REQUEST_REFUSED,
        LLM_UNAVAILABLE,
        ask,
        ask_structured,
    )
    from nexpo_workflows.llm.offline import OFFLINE_NOTICE, OfflineModel
    from nexpo_workflows.services import Services
    from nexpo_workflows.worker import build_worker
    from tests.conftest import CREDENTIALS_IN_USE
    from tests.servers.anthropic import (
        FakeAnthropic,
        RecordedRequest,
        Reply,
        invalid_request,
        overloaded,
        rate_limited,
        refusal,
        running_anthropic,
        server_error,
        text,
        tool_use,
        unauthorized,
    )

API_KEY = f"sk-ant-test-{uuid.uuid4().hex}"
CREDENTIALS_IN_USE.add(API_KEY)
MODEL = "claude-sonnet-4-20250514"
# Longer than the retry-after the tests script, so the wait seen shows which one applied.
RETRY_INTERVAL = timedelta(seconds=10)


class Verdict(StrEnum):
    APPROVE = "approve"
    REJECT = "reject"


class Review(BaseModel):
    verdict: Verdict
    score: int = Field(ge=1, le=5)
    reasons: list[str] = Field(min_length=1)


GOOD_REVIEW = {"verdict": "approve", "score": 4, "reasons": ["clear"]}


def question(content: str = "Review this draft.") -> LLMRequest:
    return LLMRequest(messages=[ChatMessage(role="user", content=content)])


@pytest.fixture
async def fake() -> AsyncIterator[FakeAnthropic]:
    async with running_anthropic() as server:
        yield server


@pytest.fixture
async def claude(fake: FakeAnthropic) -> AsyncIterator[AnthropicModel]:
    settings = Settings(
        _env_file=None,
        anthropic_api_key=API_KEY,
        anthropic_base_url=fake.url,
        anthropic_timeout_seconds=10,
    )
    model = configured_model(settings)
    assert isinstance(model, AnthropicModel)
    yield model
    await model.close()


async def test_a_text_answer(claude: AnthropicModel, fake: FakeAnthropic) -> None:
    fake.script(text("Looks good.", input_tokens=20, output_tokens=3))
    request = LLMRequest(
        system="You review drafts.",
        messages=[ChatMessage(role="user", content="Review this.")],
        temperature=0.2,
    )
    response = await claude.complete(request)
    assert (response.text, response.model, response.stop_reason) == (
        "Looks good.",
        MODEL,
        "end_turn",
    )
    assert (response.usage.input_tokens, response.usage.output_tokens) == (20, 3)
    assert not response.offline
    sent = fake.requests[0].body
    assert sent["system"] == "You review drafts."
    assert sent["temperature"] == 0.2
    assert sent["messages"] == [{"role": "user", "content": "Review this."}]
    assert "tools" not in sent


async def test_a_structured_answer_and_what_the_sdk_sent(
    claude: AnthropicModel, fake: FakeAnthropic
) -> None:
    fake.script(tool_use(GOOD_REVIEW))
    schema = Review.model_json_schema()
    response = await claude.complete(
        question().model_copy(update={"output_schema": schema, "output_name": "Review"})
    )
    assert response.structured == GOOD_REVIEW
    assert response.stop_reason == "tool_use"
    [sent] = fake.requests
    assert sent.api_key == API_KEY
    assert "anthropic-version" in sent.headers
    assert sent.body["model"] == MODEL
    assert sent.body["max_tokens"] == Settings(_env_file=None).anthropic_max_tokens
    [tool] = sent.body["tools"]
    assert (tool["name"], tool["input_schema"]) == ("Review", schema)
    assert sent.body["tool_choice"] == {"type": "tool", "name": "Review"}
    assert sent.tool_name == "Review"


async def test_a_rate_limit_is_retryable_after_the_wait_the_api_asked_for(
    claude: AnthropicModel, fake: FakeAnthropic
) -> None:
    fake.script(rate_limited(retry_after=7))
    with pytest.raises(LLMUnavailableError, match="rate_limit_error") as raised:
        await claude.complete(question())
    assert (raised.value.status, raised.value.retry_after) == (429, 7.0)
    assert API_KEY not in str(raised.value)


async def test_retry_after_ms_is_the_more_precise_wait(
    claude: AnthropicModel, fake: FakeAnthropic
) -> None:
    limited = rate_limited(retry_after=2)
    fake.script(Reply(429, limited.body, {"retry-after": "2", "retry-after-ms": "1500"}))
    with pytest.raises(LLMUnavailableError) as raised:
        await claude.complete(question())
    assert raised.value.retry_after == 1.5


@pytest.mark.parametrize(("reply", "status"), [(overloaded(), 529), (server_error(), 500)])
async def test_an_overload_or_server_error_is_retryable(
    claude: AnthropicModel, fake: FakeAnthropic, reply: Reply, status: int
) -> None:
    fake.script(reply)
    with pytest.raises(LLMUnavailableError) as raised:
        await claude.complete(question())
    assert (raised.value.status, raised.value.retry_after) == (status, None)
    assert len(fake.requests) == 1, "the SDK must not retry on its own"


async def test_an_unreachable_api_is_retryable() -> None:
    async with running_anthropic() as gone:
        url = gone.url
    model = AnthropicModel(
        api_key=API_KEY, model=MODEL, max_tokens=10, timeout_seconds=5, base_url=url
    )
    try:
        with pytest.raises(LLMUnavailableError, match="could not reach"):
            await model.complete(question())
    finally:
        await model.close()
        await model.close()


@pytest.mark.parametrize(
    ("reply", "status", "message"),
    [
        (invalid_request(), 400, "max_tokens: must be greater than 0"),
        (unauthorized(), 401, "invalid x-api-key"),
    ],
)
async def test_a_refused_request_is_not_retryable_and_says_why(
    claude: AnthropicModel, fake: FakeAnthropic, reply: Reply, status: int, message: str
) -> None:
    fake.script(reply)
    with pytest.raises(LLMRequestError, match=message) as raised:
        await claude.complete(question())
    assert raised.value.status == status
    assert API_KEY not in str(raised.value)


async def test_a_refusal_by_the_model_is_not_retryable(
    claude: AnthropicModel, fake: FakeAnthropic
) -> None:
    fake.script(refusal())
    with pytest.raises(LLMRequestError, match="refusal"):
        await claude.complete(question())


async def test_ask_gives_temporal_the_wait_of_a_rate_limit(
    claude: AnthropicModel, fake: FakeAnthropic
) -> None:
    fake.script(rate_limited(retry_after=3))
    with pytest.raises(ApplicationError) as raised:
        await ask(claude, question())
    assert raised.value.type == LLM_UNAVAILABLE
    assert not raised.value.non_retryable
    assert raised.value.next_retry_delay == timedelta(seconds=3)


async def test_ask_fails_a_refused_request_for_good_with_the_api_message(
    claude: AnthropicModel, fake: FakeAnthropic
) -> None:
    fake.script(invalid_request())
    with pytest.raises(ApplicationError, match="max_tokens: must be greater than 0") as raised:
        await ask(claude, question())
    assert raised.value.type == LLM_REQUEST_REFUSED
    assert raised.value.non_retryable


async def test_a_malformed_answer_is_asked_for_again_with_the_problem(
    claude: AnthropicModel, fake: FakeAnthropic
) -> None:
    fake.script(
        text("{not json", input_tokens=10, output_tokens=2),
        tool_use(GOOD_REVIEW, input_tokens=30, output_tokens=5),
    )
    review, answer = await ask_structured(claude, question(), Review, attempts=3)
    assert review == Review.model_validate(GOOD_REVIEW)
    assert answer.attempts == 2
    assert (answer.usage.input_tokens, answer.usage.output_tokens) == (40, 7)
    again = fake.requests[1].body["messages"]
    assert again[1] == {"role": "assistant", "content": "{not json"}
    assert "did not match" in again[2]["content"]


async def test_an_answer_that_never_matches_fails_for_good(
    claude: AnthropicModel, fake: FakeAnthropic
) -> None:
    fake.script(*(tool_use({"verdict": "maybe", "score": 9, "reasons": []}) for _ in range(3)))
    with pytest.raises(ApplicationError, match="after 3 attempts") as raised:
        await ask_structured(claude, question(), Review, attempts=3)
    assert raised.value.type == INVALID_MODEL_ANSWER
    assert raised.value.non_retryable
    # Each field's own complaint, not pydantic's count of them.
    assert "verdict" in str(raised.value)
    assert "score" in str(raised.value)
    assert len(fake.requests) == 3
    assert "score" in fake.requests[1].body["messages"][-1]["content"]


async def test_a_responder_answers_by_the_tool_asked_for(
    claude: AnthropicModel, fake: FakeAnthropic
) -> None:
    def answer(request: RecordedRequest) -> Reply:
        if request.tool_name == "Review":
            return tool_use(GOOD_REVIEW)
        return text(f"draft about {request.last_user_text}")

    fake.respond_with(answer)
    assert (await claude.complete(question("otters"))).text == "draft about otters"
    review, _ = await ask_structured(claude, question(), Review, attempts=1)
    assert review.verdict is Verdict.APPROVE


# --- Offline -----------------------------------------------------------------------------


async def test_without_a_key_the_offline_model_answers_and_says_so() -> None:
    model = configured_model(Settings(_env_file=None))
    assert isinstance(model, OfflineModel)
    response = await model.complete(question())
    assert response.offline
    assert OFFLINE_NOTICE in response.text
    assert response.text == (await model.complete(question())).text
    review, answer = await ask_structured(model, question(), Review, attempts=1)
    assert isinstance(review, Review)
    assert answer.attempts == 1


# --- An AI activity on a real Temporal server -------------------------------------------


def review_activity(services: Services) -> Callable[[str], object]:
    @activity.defn(name="test_llm_review")
    async def review(draft: str) -> Review:
        assert services.language_model is not None
        answer, _ = await ask_structured(
            services.language_model,
            question(draft),
            Review,
            services.settings.llm_structured_attempts,
        )
        return answer

    return review


@workflow.defn(name="TestLLMReviewWorkflow")
class ReviewWorkflow:
    @workflow.run
    async def run(self, draft: str) -> Review:
        review: Review = await workflow.execute_activity(
            "test_llm_review",
            draft,
            result_type=Review,
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=RetryPolicy(initial_interval=RETRY_INTERVAL, maximum_attempts=3),
        )
        return review


@pytest.fixture
async def review_worker(
    client: Client, fake: FakeAnthropic, make_settings: Callable[..., Settings]
) -> AsyncIterator[None]:
    settings = make_settings(anthropic_api_key=API_KEY, anthropic_base_url=fake.url)
    services = Services.from_settings(settings, client)
    try:
        async with build_worker(
            client,
            services,
            extra_workflows=[ReviewWorkflow],
            extra_activities=[review_activity(services)],
        ):
            yield
    finally:
        await services.close()


async def test_a_rate_limited_activity_is_retried_by_temporal_after_the_wait(
    client: Client, fake: FakeAnthropic, review_worker: None, task_queue: str
) -> None:
    fake.script(rate_limited(retry_after=1), tool_use(GOOD_REVIEW))
    review = await client.execute_workflow(
        ReviewWorkflow.run,
        "a draft",
        id=f"llm-{uuid.uuid4()}",
        task_queue=task_queue,
        execution_timeout=timedelta(seconds=60),
    )
    assert review == Review.model_validate(GOOD_REVIEW)
    first, second = fake.requests
    # The API's wait (1 s), not the policy's own interval.
    assert 0.9 <= second.received_at - first.received_at < RETRY_INTERVAL.total_seconds()


async def test_a_refused_request_fails_the_workflow_without_retrying(
    client: Client, fake: FakeAnthropic, review_worker: None, task_queue: str
) -> None:
    fake.script(invalid_request())
    with pytest.raises(WorkflowFailureError) as raised:
        await client.execute_workflow(
            ReviewWorkflow.run,
            "a draft",
            id=f"llm-{uuid.uuid4()}",
            task_queue=task_queue,
            execution_timeout=timedelta(seconds=60),
        )
    activity_error = raised.value.cause
    assert isinstance(activity_error, ActivityError)
    cause = activity_error.cause
    assert isinstance(cause, ApplicationError)
    assert cause.type == LLM_REQUEST_REFUSED
    assert "max_tokens: must be greater than 0" in cause.message
    assert len(fake.requests) == 1
