"""The interface every notifier implements, and the notification they all send."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Self

from pydantic import BaseModel, Field

from nexpo_workflows.config import Settings


class NotifierUnavailableError(Exception):
    """The channel cannot be reached or answered with a transient error; retrying may help."""


class NotificationRejectedError(Exception):
    """The channel refused this notification for good (an SMTP 5xx reply, a webhook 4xx):
    sending the same notification again cannot help. ``status`` is the reply code, if any."""

    def __init__(self, message: str, *, status: int | None = None):
        super().__init__(message)
        self.status = status


class NoRecipientsError(ValueError):
    """An email with no recipient: the notification names none and NOTIFY_EMAIL_TO is empty.

    A configuration or request mistake, so not retryable.
    """


class Notification(BaseModel):
    """What happened, for people (subject/body, to ``recipients``) and machines (event/data).

    ``id`` is stable across retries of one notification, so a receiver can drop duplicates.
    """

    id: str = Field(min_length=1, max_length=200)
    event: str = Field(min_length=1, max_length=100)
    subject: str = Field(min_length=1, max_length=300)
    body: str = ""
    # Email addresses; a channel without recipients (a webhook) ignores them.
    recipients: list[str] = Field(default_factory=list)
    data: dict[str, Any] = Field(default_factory=dict)


class Notifier(ABC):
    """A channel notifications go out on: one implementation module per channel."""

    name: ClassVar[str]

    @classmethod
    @abstractmethod
    def from_settings(cls, settings: Settings) -> Self:
        """Build from the channel's variables in the settings (no network yet)."""

    @abstractmethod
    async def send(self, notification: Notification) -> None:
        """Deliver once; raises NotifierUnavailableError when delivery may succeed later,
        NotificationRejectedError (or NoRecipientsError) when it never will."""

    async def close(self) -> None:  # noqa: B027 - most channels hold no connection
        """Release connections; safe to call twice."""
