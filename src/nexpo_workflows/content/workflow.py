"""AIContentPipelineWorkflow: a model drafts, a model or a person reviews (and may ask for
changes), the approved draft is published to every enabled database or to none, and people
are told the outcome."""

from __future__ import annotations

import contextlib
import logging
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from nexpo_workflows import execution
    from nexpo_workflows.content.activities import ContentActivities
    from nexpo_workflows.content.models import (
        DECISIONS,
        AIReview,
        ContentPlan,
        ContentRequest,
        ContentResult,
        ContentStatus,
        Decision,
        Draft,
        GeneratedDraft,
        GenerateInput,
        HumanReview,
        NotifyInput,
        PipelineStage,
        PipelineStatus,
        PlanContentInput,
        PublishedContent,
        ReviewInput,
        ReviewMode,
        ReviewRecord,
    )
    from nexpo_workflows.content.publish import Publication, publish_everywhere
    from nexpo_workflows.heartbeats import HEARTBEAT_SECONDS
    from nexpo_workflows.llm import TokenUsage
    from nexpo_workflows.notify import Notification
    from nexpo_workflows.notify.delivery import send_on_each_channel
    from nexpo_workflows.retries import PLAN_RETRY
    from nexpo_workflows.workflow_errors import raise_refusal

WORKFLOW_NAME = "AIContentPipelineWorkflow"
PUBLISH_FAILED = "ContentPublishFailed"
SUBMIT_REVIEW = "submit_review"
NOT_AWAITING_REVIEW = "NotAwaitingReview"
INVALID_REVIEW = "InvalidReview"
# The reviewer recorded when the deadline decided.
DEADLINE_REVIEWER = "deadline"

# A rate limit or an overload passes; the API's retry-after sets the delay when it gives one.
# A refused request or an answer that never fits its schema is non-retryable already.
_LLM_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=2),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=1),
    maximum_attempts=6,
)
_NOTIFY_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=5,
)


def _added(total: TokenUsage, usage: TokenUsage) -> TokenUsage:
    return TokenUsage(
        input_tokens=total.input_tokens + usage.input_tokens,
        output_tokens=total.output_tokens + usage.output_tokens,
    )


@workflow.defn(name=WORKFLOW_NAME)
class AIContentPipelineWorkflow:
    @workflow.init
    def __init__(self, request: ContentRequest) -> None:
        self._request = request
        self._stage = PipelineStage.GENERATING
        self._draft: Draft | None = None
        self._revision = 0
        self._reviews: list[ReviewRecord] = []
        self._usage = TokenUsage()
        self._published_to: list[str] = []
        # A person's review, accepted by the update and not yet acted on.
        self._submitted: ReviewRecord | None = None

    @workflow.run
    async def run(self, request: ContentRequest) -> ContentResult:
        try:
            plan: ContentPlan = await execution.execute_activity(
                ContentActivities.plan_content_pipeline,
                PlanContentInput(request=request),
                local=True,
                start_to_close_timeout=timedelta(seconds=10),
                retry_policy=PLAN_RETRY,
            )
            if plan.review_mode is ReviewMode.HUMAN and not execution.durable():
                raise execution.needs_temporal("a human review")
            review = await self._draft_until_decided(plan)
        except ActivityError as error:
            self._stage = PipelineStage.FAILED
            raise_refusal(error)
        if review.decision is Decision.APPROVE:
            result = await self._publish(plan, review)
        else:
            result = await self._reject(plan, review)
        await execution.all_handlers_finished()
        return result

    async def _draft_until_decided(self, plan: ContentPlan) -> ReviewRecord:
        """Draft and review until a review approves, rejects, or asks for changes once more
        than the revisions allowed."""
        feedback: ReviewRecord | None = None
        while True:
            await self._generate(plan, feedback)
            review = await self._review(plan)
            self._reviews.append(review)
            if review.decision is not Decision.REQUEST_CHANGES or (
                self._revision >= plan.max_revisions
            ):
                return review
            feedback = review
            self._revision += 1

    def _llm_options(self, plan: ContentPlan) -> dict[str, Any]:
        return {
            "start_to_close_timeout": timedelta(seconds=plan.llm_timeout_seconds),
            "heartbeat_timeout": timedelta(seconds=HEARTBEAT_SECONDS * 5),
            "retry_policy": _LLM_RETRY,
        }

    async def _generate(self, plan: ContentPlan, feedback: ReviewRecord | None) -> None:
        self._stage = PipelineStage.GENERATING
        generated: GeneratedDraft = await execution.execute_activity(
            ContentActivities.generate_content,
            GenerateInput(
                request=self._request,
                revision=self._revision,
                previous=self._draft if feedback else None,
                feedback=feedback.comments if feedback else None,
            ),
            **self._llm_options(plan),
        )
        self._draft = generated.draft
        self._usage = _added(self._usage, generated.usage)

    async def _review(self, plan: ContentPlan) -> ReviewRecord:
        assert self._draft is not None
        if plan.review_mode is ReviewMode.HUMAN:
            return await self._human_review(plan, self._draft)
        self._stage = PipelineStage.REVIEWING
        answer: AIReview = await execution.execute_activity(
            ContentActivities.review_content,
            ReviewInput(request=self._request, draft=self._draft),
            **self._llm_options(plan),
        )
        self._usage = _added(self._usage, answer.usage)
        return ReviewRecord(
            reviewer=f"ai:{answer.model}",
            decision=answer.verdict.decision,
            comments=answer.verdict.comments,
            at=execution.now(),
            revision=self._revision,
        )

    async def _human_review(self, plan: ContentPlan, draft: Draft) -> ReviewRecord:
        self._stage = PipelineStage.AWAITING_REVIEW
        content_id = execution.workflow_id()
        await self._notify(
            plan,
            "content.review_requested",
            plan.reviewers,
            f"Review requested: {draft.title}",
            f"{draft.title}\n\n{draft.body}\n\nReview it with: nexpo-workflows content review "
            f"{content_id} --reviewer <you> --decision approve|reject|request-changes",
            {"revision": self._revision},
            key=f"r{self._revision}",
        )
        with contextlib.suppress(TimeoutError):
            await workflow.wait_condition(
                lambda: self._submitted is not None,
                timeout=plan.review_timeout_seconds,
                timeout_summary="review deadline",
            )
        # Checked rather than trusting the timeout: a review accepted in the same workflow task
        # as the deadline's timer wins, or its update would never be answered.
        if self._submitted is not None:
            review, self._submitted = self._submitted, None
            return review
        # From here on a late review is refused: the deadline has decided.
        self._stage = PipelineStage.REVIEWING
        await self._notify(
            plan,
            "content.review_escalated",
            sorted({*plan.reviewers, *plan.recipients}),
            f"Review overdue: {draft.title}",
            f"Nobody reviewed content {content_id} within {plan.review_timeout_seconds:g}s; "
            f"the default decision ({plan.review_default}) applies.",
            {"default": plan.review_default.value, "revision": self._revision},
        )
        return ReviewRecord(
            reviewer=DEADLINE_REVIEWER,
            decision=plan.review_default,
            comments=f"no review within {plan.review_timeout_seconds:g}s: "
            f"the default ({plan.review_default}) applied",
            at=execution.now(),
            revision=self._revision,
        )

    async def _publish(self, plan: ContentPlan, approval: ReviewRecord) -> ContentResult:
        assert self._draft is not None
        self._stage = PipelineStage.PUBLISHING
        content = PublishedContent(
            content_id=execution.workflow_id(),
            draft=self._draft,
            topic=self._request.topic,
            audience=self._request.audience,
            revision=self._revision,
            approved_by=approval.reviewer,
            approved_at=approval.at,
        )
        publication = await publish_everywhere(plan.providers, content)
        if publication.status is not ContentStatus.PUBLISHED:
            self._stage = PipelineStage.FAILED
            result = self._result(publication.status, publication, reason=publication.failure)
            self._log(result)
            raise ApplicationError(
                result.summary(),
                result.model_dump(mode="json"),
                type=PUBLISH_FAILED,
                non_retryable=True,
            )
        self._published_to = publication.published_to
        self._stage = PipelineStage.NOTIFYING
        notified = await self._notify(
            plan,
            "content.published",
            plan.recipients,
            f"Published: {self._draft.title}",
            f"{self._draft.title}\n\n{self._draft.body}\n\nApproved by {approval.reviewer}; "
            f"published to {', '.join(self._published_to)}.",
            {"published_to": self._published_to, "approved_by": approval.reviewer},
        )
        self._stage = PipelineStage.PUBLISHED
        result = self._result(ContentStatus.PUBLISHED, publication, notified=notified)
        self._log(result)
        return result

    async def _reject(self, plan: ContentPlan, review: ReviewRecord) -> ContentResult:
        if review.decision is Decision.REQUEST_CHANGES:
            reason = f"changes still requested after {self._revision} revisions (the limit)"
        else:
            reason = f"rejected by {review.reviewer}" + (
                f": {review.comments}" if review.comments else ""
            )
        self._stage = PipelineStage.NOTIFYING
        title = self._draft.title if self._draft else self._request.topic
        notified = await self._notify(
            plan,
            "content.rejected",
            plan.recipients,
            f"Rejected: {title}",
            reason,
            {"reason": reason, "reviewer": review.reviewer},
        )
        self._stage = PipelineStage.REJECTED
        result = self._result(ContentStatus.REJECTED, None, notified=notified, reason=reason)
        self._log(result)
        return result

    async def _notify(
        self,
        plan: ContentPlan,
        event: str,
        recipients: list[str],
        subject: str,
        body: str,
        data: dict[str, Any],
        key: str | None = None,
    ) -> list[str]:
        """Send on every channel; the channels that delivered. A notice that cannot be
        delivered changes no outcome."""
        content_id = execution.workflow_id()
        notification = Notification(
            # Stable across retries, so a receiver can drop duplicates.
            id=f"{content_id}:{event}" + (f":{key}" if key else ""),
            event=event,
            subject=subject[:300],
            body=body,
            recipients=recipients,
            data={"content_id": content_id, "topic": self._request.topic, **data},
        )

        deliveries = await send_on_each_channel(
            plan.channels,
            ContentActivities.notify_users,
            lambda channel: NotifyInput(channel=channel, notification=notification),
            _NOTIFY_RETRY,
            event,
        )
        return deliveries.delivered

    def _result(
        self,
        status: ContentStatus,
        publication: Publication | None,
        *,
        notified: list[str] | None = None,
        reason: str | None = None,
    ) -> ContentResult:
        return ContentResult(
            content_id=execution.workflow_id(),
            status=status,
            draft=self._draft,
            revisions=self._revision,
            reviews=list(self._reviews),
            published_to=list(self._published_to),
            usage=self._usage,
            providers=publication.providers if publication else [],
            notified=notified or [],
            reason=reason,
        )

    def _log(self, result: ContentResult) -> None:
        # workflow.logger is silent during replay, so each outcome is logged once.
        level = logging.INFO if result.status is ContentStatus.PUBLISHED else logging.WARNING
        execution.logger().log(level, "content pipeline %s", result.summary())

    @workflow.query(name="status")
    def status(self) -> PipelineStatus:
        return PipelineStatus(
            content_id=workflow.info().workflow_id,
            stage=self._stage,
            draft=self._draft,
            revision=self._revision,
            reviews=list(self._reviews),
            usage=self._usage,
            published_to=list(self._published_to),
        )

    @workflow.update(name=SUBMIT_REVIEW)
    async def submit_review(self, review: HumanReview) -> PipelineStatus:
        self._submitted = ReviewRecord(
            reviewer=review.reviewer.strip(),
            decision=Decision(review.decision),
            comments=review.comments.strip(),
            at=workflow.now(),
            revision=self._revision,
        )
        # Answer once the pipeline has acted on it, so the caller sees where it went next.
        await workflow.wait_condition(lambda: self._submitted is None)
        return self.status()

    @submit_review.validator
    def _validate_review(self, review: HumanReview) -> None:
        if self._stage is not PipelineStage.AWAITING_REVIEW or self._submitted is not None:
            raise ApplicationError(
                f"content {workflow.info().workflow_id} is not awaiting a review "
                f"(stage: {self._stage})",
                type=NOT_AWAITING_REVIEW,
            )
        if review.decision not in DECISIONS:
            raise ApplicationError(
                f"decision must be one of {DECISIONS}, not {review.decision!r}",
                type=INVALID_REVIEW,
            )
        if not review.reviewer.strip():
            raise ApplicationError("a reviewer is required", type=INVALID_REVIEW)
