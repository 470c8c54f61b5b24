"""The content pipeline's activities: the model calls, the database writes, the notices."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError

from nexpo_workflows.content.models import (
    AIReview,
    ContentPlan,
    ContentRequest,
    Decision,
    Draft,
    GeneratedDraft,
    GenerateInput,
    NotifyInput,
    PlanContentInput,
    PublishInput,
    ReviewInput,
    ReviewMode,
    ReviewVerdict,
    UnpublishInput,
    UnpublishResult,
)
from nexpo_workflows.llm import ChatMessage, LanguageModel, LLMRequest
from nexpo_workflows.llm.calls import ask_structured
from nexpo_workflows.notify import Notifier
from nexpo_workflows.notify.delivery import deliver
from nexpo_workflows.providers import DatabaseProvider, DatasetRecord, ProviderUnavailableError
from nexpo_workflows.services import Services
from nexpo_workflows.users.steps import PROVIDER_UNAVAILABLE, UNKNOWN_PROVIDER

CONTENT_DATASET = "content"
NOT_CONFIGURED = "ContentPipelineNotConfigured"
# Above the model's own timeout: the activity's deadline covers every structured attempt.
_LLM_MARGIN_SECONDS = 30.0

_WRITER = (
    "You write content for publication. Answer with the Draft tool: a title, a body in "
    "Markdown and a few lowercase tags."
)
_REVIEWER = (
    "You review drafts before publication against this rubric:\n{rubric}\n"
    "Answer with the ReviewVerdict tool: approve a draft that meets the rubric, "
    "request_changes (saying which) for one that can be fixed, reject one that cannot."
)


def _brief(request: ContentRequest) -> str:
    lines = [f"Topic: {request.topic}"]
    if request.audience:
        lines.append(f"Audience: {request.audience}")
    if request.instructions:
        lines.append(f"Instructions: {request.instructions}")
    return "\n".join(lines)


def _show(draft: Draft) -> str:
    return f"Title: {draft.title}\nTags: {', '.join(draft.tags)}\n\n{draft.body}"


def _generation_prompt(input: GenerateInput) -> str:
    if input.previous is None:
        return _brief(input.request)
    return (
        f"{_brief(input.request)}\n\nRevise this draft:\n{_show(input.previous)}\n\n"
        f"The reviewer asked for these changes:\n{input.feedback or '(no comments)'}"
    )


def _not_configured(message: str) -> ApplicationError:
    return ApplicationError(message, type=NOT_CONFIGURED, non_retryable=True)


class ContentActivities:
    """Built once per worker from the services: the model, the databases, the channels."""

    def __init__(self, services: Services) -> None:
        self._services = services

    @property
    def _model(self) -> LanguageModel:
        if self._services.language_model is None:
            raise _not_configured("no language model is configured on this worker")
        return self._services.language_model

    def _provider(self, name: str) -> DatabaseProvider:
        try:
            return self._services.providers[name]
        except KeyError:
            raise ApplicationError(
                f"provider {name} is not enabled on this worker",
                type=UNKNOWN_PROVIDER,
                non_retryable=True,
            ) from None

    def _notifier(self, name: str) -> Notifier:
        try:
            return self._services.notifiers[name]
        except KeyError:
            raise _not_configured(f"channel {name} is not enabled on this worker") from None

    @activity.defn(name="plan_content_pipeline")
    async def plan_content_pipeline(self, input: PlanContentInput) -> ContentPlan:
        settings = self._services.settings
        if not self._services.providers:
            raise _not_configured("no database is enabled to publish to")
        request = input.request
        return ContentPlan(
            providers=list(self._services.providers),
            channels=list(self._services.notifiers),
            review_mode=request.review_mode or ReviewMode(settings.content_review_mode),
            review_timeout_seconds=request.review_timeout_seconds
            or settings.content_review_timeout_seconds,
            review_default=Decision(settings.content_review_default),
            max_revisions=settings.content_max_revisions,
            reviewers=list(request.reviewers or settings.notify_email_to),
            recipients=list(request.recipients or settings.notify_email_to),
            llm_timeout_seconds=settings.anthropic_timeout_seconds
            * settings.llm_structured_attempts
            + _LLM_MARGIN_SECONDS,
        )

    @activity.defn(name="generate_content")
    async def generate_content(self, input: GenerateInput) -> GeneratedDraft:
        request = LLMRequest(
            system=_WRITER,
            messages=[ChatMessage(role="user", content=_generation_prompt(input))],
        )
        draft, answer = await ask_structured(
            self._model, request, Draft, self._services.settings.llm_structured_attempts
        )
        return GeneratedDraft(draft=draft, model=answer.response.model, usage=answer.usage)

    @activity.defn(name="review_content")
    async def review_content(self, input: ReviewInput) -> AIReview:
        settings = self._services.settings
        request = LLMRequest(
            system=_REVIEWER.format(rubric=settings.content_review_rubric),
            messages=[
                ChatMessage(
                    role="user",
                    content=f"{_brief(input.request)}\n\nDraft:\n{_show(input.draft)}",
                )
            ],
            # A verdict should not change from one attempt to the next.
            temperature=0,
        )
        verdict, answer = await ask_structured(
            self._model, request, ReviewVerdict, settings.llm_structured_attempts
        )
        return AIReview(verdict=verdict, model=answer.response.model, usage=answer.usage)

    @activity.defn(name="publish_content")
    async def publish_content(self, input: PublishInput) -> None:
        content = input.content
        record = DatasetRecord(id=content.content_id, version=content.version, data=content.data())
        try:
            await self._provider(input.provider).upsert_records(CONTENT_DATASET, [record])
        except ProviderUnavailableError as error:
            raise ApplicationError(str(error), type=PROVIDER_UNAVAILABLE) from error

    @activity.defn(name="unpublish_content")
    async def unpublish_content(self, input: UnpublishInput) -> UnpublishResult:
        try:
            removed = await self._provider(input.provider).delete_records(
                CONTENT_DATASET, [input.content_id]
            )
        except ProviderUnavailableError as error:
            raise ApplicationError(str(error), type=PROVIDER_UNAVAILABLE) from error
        return UnpublishResult(existed=removed > 0)

    @activity.defn(name="notify_users")
    async def notify_users(self, input: NotifyInput) -> None:
        await deliver(self._notifier(input.channel), input.notification)

    def all(self) -> list[Callable[..., Any]]:
        return [
            self.plan_content_pipeline,
            self.generate_content,
            self.review_content,
            self.publish_content,
            self.unpublish_content,
            self.notify_users,
        ]
