"""The channel when nothing else is configured: one log line per notification."""

from __future__ import annotations

import logging
from typing import ClassVar, Self

from nexpo_workflows.config import Settings
from nexpo_workflows.notify.base import Notification, Notifier

log = logging.getLogger(__name__)


class LogNotifier(Notifier):
    name: ClassVar[str] = "log"

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        return cls()

    async def send(self, notification: Notification) -> None:
        log.info(
            "notification %s (%s): %s", notification.id, notification.event, notification.subject
        )
