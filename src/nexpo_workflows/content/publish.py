"""Publishing approved content to every enabled database, or to none.

Kept apart from the onboarding saga, whose plan carries step modes, parallel groups and a
saga-wide deadline this one does not need; its compensation rules are the saga kernel's
(``nexpo_workflows.saga``). Imported passed through the sandbox; it only calls the
deterministic workflow APIs.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, CancelledError
from temporalio.workflow import ActivityCancellationType

from nexpo_workflows import execution
from nexpo_workflows.content.activities import ContentActivities
from nexpo_workflows.content.models import (
    ContentStatus,
    PublishedContent,
    PublishInput,
    UnpublishInput,
)
from nexpo_workflows.saga import Saga, reason
from nexpo_workflows.users.models import ProviderOutcome, ProviderStatus
from nexpo_workflows.users.saga import settle_provider_outcomes

SAGA_NAME = "content_publishing"
_STEP_TIMEOUT = timedelta(seconds=30)
# Bounded both ways, so a database that keeps failing ends the saga in seconds, not never.
_PUBLISH_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=200),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=5),
    maximum_attempts=4,
)
_PUBLISH_DEADLINE = timedelta(minutes=2)
# An undo is worth more patience than a write: giving up leaves content that was not approved
# everywhere.
_UNPUBLISH_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=200),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=10),
    maximum_attempts=10,
)


@dataclass
class Publication:
    status: ContentStatus
    providers: list[ProviderOutcome]
    failure: str | None = None

    @property
    def published_to(self) -> list[str]:
        return [o.provider for o in self.providers if o.status is ProviderStatus.CREATED]


async def _step(activity: Any, arg: Any, retry: RetryPolicy) -> None:
    try:
        await execution.execute_activity(
            activity,
            arg,
            start_to_close_timeout=_STEP_TIMEOUT,
            schedule_to_close_timeout=_PUBLISH_DEADLINE,
            retry_policy=retry,
            # Wait until a cancelled write has really stopped, so none lands after its undo.
            cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
        )
    except ActivityError as error:
        if isinstance(error.cause, CancelledError):
            raise asyncio.CancelledError from error  # stopped by a cancellation, not failed
        raise


async def publish_everywhere(providers: list[str], content: PublishedContent) -> Publication:
    outcomes = {
        p: ProviderOutcome(provider=p, status=ProviderStatus.NOT_STARTED) for p in providers
    }
    saga = Saga(SAGA_NAME, settle_provider_outcomes(outcomes))

    async def publish(provider: str) -> None:
        await saga.step(
            provider,
            lambda: _step(
                ContentActivities.publish_content,
                PublishInput(provider=provider, content=content),
                _PUBLISH_RETRY,
            ),
            lambda: _step(
                ContentActivities.unpublish_content,
                UnpublishInput(provider=provider, content_id=content.content_id),
                _UNPUBLISH_RETRY,
            ),
        )

    async def publish_all() -> str | None:
        for provider in providers:
            outcome = outcomes[provider]
            try:
                await publish(provider)
            except ActivityError as error:
                outcome.status, outcome.error = ProviderStatus.FAILED, reason(error)
                return f"{provider}: {outcome.error}"
            outcome.status = ProviderStatus.CREATED
        return None

    failure = await saga.run(publish_all)
    if failure is None:
        return Publication(ContentStatus.PUBLISHED, list(outcomes.values()))
    complete = await saga.compensate()
    status = ContentStatus.PUBLISH_FAILED if complete else ContentStatus.PUBLISH_ROLLBACK_INCOMPLETE
    return Publication(status, list(outcomes.values()), failure)
