"""Inputs, state and result of the AI content pipeline, and its activities' inputs."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, EmailStr, Field, field_validator

from nexpo_workflows.llm import TokenUsage
from nexpo_workflows.notify import Notification
from nexpo_workflows.users.models import ProviderOutcome

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
WORKFLOW_ID_PREFIX = "content-"
_MAX_REVIEW_SECONDS = 366 * 86400.0


def new_content_id() -> str:
    """The pipeline's workflow id, which is also the published content's id."""
    return f"{WORKFLOW_ID_PREFIX}{uuid.uuid4()}"


class ReviewMode(StrEnum):
    AI = "ai"
    HUMAN = "human"


class Decision(StrEnum):
    # Approve first: the offline model answers an enum's first member, so a pipeline tried
    # without an API key goes all the way to publishing.
    APPROVE = "approve"
    REJECT = "reject"
    REQUEST_CHANGES = "request_changes"


DECISIONS = [decision.value for decision in Decision]


class ContentRequest(BaseModel):
    topic: str = Field(min_length=1, max_length=300)
    instructions: str | None = Field(default=None, max_length=4000)
    audience: str | None = Field(default=None, max_length=300)
    # None: CONTENT_REVIEW_MODE.
    review_mode: ReviewMode | None = None
    # Who is asked for a human review (and told when it is overdue); empty: NOTIFY_EMAIL_TO.
    reviewers: list[EmailStr] = Field(default_factory=list, max_length=20)
    # Who is told of the outcome; empty: NOTIFY_EMAIL_TO.
    recipients: list[EmailStr] = Field(default_factory=list, max_length=50)
    # None: CONTENT_REVIEW_TIMEOUT_SECONDS. Bounded, so the deadline fits a durable timer.
    review_timeout_seconds: float | None = Field(default=None, gt=0, le=_MAX_REVIEW_SECONDS)

    @field_validator("topic")
    @classmethod
    def _topic_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("the topic must not be blank")
        return value.strip()

    @field_validator("instructions", "audience")
    @classmethod
    def _blank_is_none(cls, value: str | None) -> str | None:
        if value is None:
            return None
        return value.strip() or None


class Draft(BaseModel):
    """What the model writes (its structured answer) and what is published."""

    title: str = Field(min_length=1, max_length=200)
    body: str = Field(min_length=1, max_length=20000)
    tags: list[Annotated[str, Field(min_length=1, max_length=50)]] = Field(max_length=10)


class ReviewVerdict(BaseModel):
    """The AI reviewer's structured answer."""

    decision: Decision
    comments: str = Field(max_length=4000)


class HumanReview(BaseModel):
    """The ``submit_review`` update's input. Plain strings, checked by the update's validator,
    so a wrong value is refused with a clear reason rather than failing to decode."""

    reviewer: str = Field(max_length=320)
    decision: str = Field(max_length=50)
    comments: str = Field(default="", max_length=4000)


class ReviewRecord(BaseModel):
    reviewer: str
    decision: Decision
    comments: str
    at: datetime
    # The revision of the draft this review is about (0: the first draft).
    revision: int


class PipelineStage(StrEnum):
    GENERATING = "generating"
    REVIEWING = "reviewing"
    AWAITING_REVIEW = "awaiting_review"
    PUBLISHING = "publishing"
    NOTIFYING = "notifying"
    PUBLISHED = "published"
    REJECTED = "rejected"
    FAILED = "failed"


class PipelineStatus(BaseModel):
    """What the ``status`` query returns."""

    content_id: str
    stage: PipelineStage
    draft: Draft | None
    revision: int
    reviews: list[ReviewRecord]
    usage: TokenUsage
    published_to: list[str]


class ContentStatus(StrEnum):
    PUBLISHED = "published"
    REJECTED = "rejected"
    # A database could not be written: every write was undone.
    PUBLISH_FAILED = "publish_failed"
    # An undo kept failing too: the result's providers name where the content remains.
    PUBLISH_ROLLBACK_INCOMPLETE = "publish_rollback_incomplete"


class ContentResult(BaseModel):
    content_id: str
    status: ContentStatus
    draft: Draft | None
    revisions: int
    reviews: list[ReviewRecord]
    published_to: list[str]
    usage: TokenUsage
    providers: list[ProviderOutcome] = Field(default_factory=list)
    # Channels the outcome's notification went out on.
    notified: list[str] = Field(default_factory=list)
    # Why it was not published, when it was not.
    reason: str | None = None

    def summary(self) -> str:
        where = ", ".join(self.published_to) or "nowhere"
        reason = f" ({self.reason})" if self.reason else ""
        return f"content {self.content_id} {self.status}{reason}; published to {where}"


# --- Activities ------------------------------------------------------------------------------


class PlanContentInput(BaseModel):
    request: ContentRequest


class ContentPlan(BaseModel):
    """The worker's configuration for one run, recorded in history so replays agree."""

    providers: list[str]
    channels: list[str]
    review_mode: ReviewMode
    review_timeout_seconds: float
    review_default: Decision
    max_revisions: int
    reviewers: list[str]
    recipients: list[str]
    # A model call may take this long (every structured attempt included).
    llm_timeout_seconds: float


class GenerateInput(BaseModel):
    request: ContentRequest
    revision: int = Field(ge=0)
    # For a revision: the draft the reviewer saw and what they asked for.
    previous: Draft | None = None
    feedback: str | None = None


class ModelAnswer(BaseModel):
    model: str
    usage: TokenUsage


class GeneratedDraft(ModelAnswer):
    draft: Draft


class ReviewInput(BaseModel):
    request: ContentRequest
    draft: Draft


class AIReview(ModelAnswer):
    verdict: ReviewVerdict


class PublishedContent(BaseModel):
    """The approved draft with what readers and auditors need, as every database stores it."""

    content_id: str
    draft: Draft
    topic: str
    audience: str | None
    revision: int
    approved_by: str
    approved_at: datetime

    @property
    def version(self) -> int:
        """Microseconds since the epoch of the approval: a replayed publish writes the same."""
        return (self.approved_at - _EPOCH) // timedelta(microseconds=1)

    def data(self) -> dict[str, Any]:
        return {
            **self.draft.model_dump(mode="json"),
            "topic": self.topic,
            "audience": self.audience,
            "revision": self.revision,
            "approved_by": self.approved_by,
            "approved_at": self.approved_at.isoformat(),
        }


class PublishInput(BaseModel):
    provider: str
    content: PublishedContent


class UnpublishInput(BaseModel):
    provider: str
    content_id: str


class UnpublishResult(BaseModel):
    existed: bool


class NotifyInput(BaseModel):
    channel: str
    notification: Notification
