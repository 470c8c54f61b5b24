"""Notifiers, chosen by configuration: email with SMTP_HOST, webhooks with WEBHOOK_URLS."""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import NamedTuple

from nexpo_workflows.config import Settings
from nexpo_workflows.notify.base import (
    NoRecipientsError,
    Notification,
    NotificationRejectedError,
    Notifier,
    NotifierUnavailableError,
)

__all__ = [
    "NOTIFIERS",
    "NoRecipientsError",
    "Notification",
    "NotificationRejectedError",
    "Notifier",
    "NotifierUnavailableError",
    "enabled_notifiers",
]


class Registration(NamedTuple):
    enabled: Callable[[Settings], bool]
    # "module:Class", imported only when enabled.
    implementation: str


# A new channel is one module plus one line here (and its settings).
NOTIFIERS: dict[str, Registration] = {
    "email": Registration(lambda s: bool(s.smtp_host), "smtp:EmailNotifier"),
    "webhook": Registration(lambda s: bool(s.webhook_urls), "webhook:WebhookNotifier"),
}


def enabled_notifier_names(settings: Settings) -> list[str]:
    names = [name for name, reg in NOTIFIERS.items() if reg.enabled(settings)]
    return names or ["log"]


def enabled_notifiers(settings: Settings) -> dict[str, Notifier]:
    """Fresh instances of every configured channel; the log channel when there is none."""
    found: dict[str, Notifier] = {}
    for name in enabled_notifier_names(settings):
        implementation = NOTIFIERS[name].implementation if name in NOTIFIERS else "log:LogNotifier"
        module, _, cls = implementation.partition(":")
        notifier_class: type[Notifier] = getattr(
            import_module(f"nexpo_workflows.notify.{module}"), cls
        )
        found[name] = notifier_class.from_settings(settings)
    return found
