"""A notification on each channel: sent by one activity per channel, whose failure says
whether a retry can help.

Imported passed through the workflow sandbox; ``send_on_each_channel`` only calls the
deterministic workflow APIs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

from nexpo_workflows import execution
from nexpo_workflows.errors import first_line
from nexpo_workflows.notify.base import (
    NoRecipientsError,
    Notification,
    NotificationRejectedError,
    Notifier,
    NotifierUnavailableError,
)

NOTIFIER_UNAVAILABLE = "NotifierUnavailable"
NOTIFICATION_REJECTED = "NotificationRejected"
_SEND_TIMEOUT = timedelta(seconds=60)


async def deliver(notifier: Notifier, notification: Notification) -> None:
    """Send once. A channel that refused for good (no recipients, a webhook's 4xx, an SMTP
    5xx) fails non-retryably: sending the same notification again cannot help. One that may
    come back fails retryably, within the caller's bounded retry policy."""
    try:
        await notifier.send(notification)
    except (NotificationRejectedError, NoRecipientsError) as error:
        raise ApplicationError(
            str(error), type=NOTIFICATION_REJECTED, non_retryable=True
        ) from error
    except NotifierUnavailableError as error:
        raise ApplicationError(str(error), type=NOTIFIER_UNAVAILABLE) from error


@dataclass
class ChannelDeliveries:
    delivered: list[str]
    # The channels that gave up, with why.
    failed: dict[str, str]


async def send_on_each_channel(
    channels: Sequence[str],
    activity: Callable[..., Awaitable[None]],
    input_for: Callable[[str], Any],
    retry: RetryPolicy,
    summary: str,
) -> ChannelDeliveries:
    """From a workflow: one activity per channel, all at once, so a retry repeats only the
    channel that failed and never re-sends on one that delivered."""

    async def send(channel: str) -> str | None:
        try:
            await execution.execute_activity(
                activity,
                input_for(channel),
                start_to_close_timeout=_SEND_TIMEOUT,
                retry_policy=retry,
                summary=f"{summary} via {channel}",
            )
        except ActivityError as error:
            reason = first_line(error.cause or error)
            execution.logger().warning("%s not sent via %s: %s", summary, channel, reason)
            return reason
        return None

    reasons = await asyncio.gather(*(send(channel) for channel in channels))
    outcomes = dict(zip(channels, reasons, strict=True))
    return ChannelDeliveries(
        delivered=[channel for channel, reason in outcomes.items() if reason is None],
        failed={channel: reason for channel, reason in outcomes.items() if reason is not None},
    )
