"""A notifier that keeps what it was given: what a workflow told people, for tests to check.

The real channels (SMTP, signed webhooks) are tested against real servers in test_notify.py;
workflow tests need only what was sent.
"""

from __future__ import annotations

from typing import ClassVar, Self

from nexpo_workflows.config import Settings
from nexpo_workflows.notify import Notification, Notifier


class RecordingNotifier(Notifier):
    name: ClassVar[str] = "recording"

    def __init__(self) -> None:
        self.sent: list[Notification] = []

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        return cls()

    async def send(self, notification: Notification) -> None:
        self.sent.append(notification)

    def events(self) -> list[str]:
        return [n.event for n in self.sent]
