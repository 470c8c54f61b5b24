"""Email over SMTP (extra: email), on when SMTP_HOST is set.

Each send opens its own connection and closes it: notifications are rare, servers drop idle
connections, and a fresh connection needs no reconnect logic. A retried notification keeps
its ``Message-ID`` (derived from the notification id), so duplicates are recognisable.
"""

from __future__ import annotations

import hashlib
import logging
from email.message import EmailMessage
from email.utils import formatdate, parseaddr
from typing import ClassVar, Self

import aiosmtplib

from nexpo_workflows.config import Settings
from nexpo_workflows.notify.base import (
    NoRecipientsError,
    Notification,
    NotificationRejectedError,
    Notifier,
    NotifierUnavailableError,
)

log = logging.getLogger(__name__)


def message_id(notification_id: str, sender: str) -> str:
    """The Message-ID of every email sent for ``notification_id``.

    A digest rather than the id itself: ids may hold characters a Message-ID may not.
    """
    digest = hashlib.sha256(notification_id.encode()).hexdigest()[:32]
    domain = parseaddr(sender)[1].rpartition("@")[2]
    return f"<nexpo.{digest}@{domain or 'nexpo-workflows'}>"


def _one_line(text: str) -> str:
    # A header value with a line break would be refused (or would forge another header).
    return " ".join(text.splitlines())


class EmailNotifier(Notifier):
    name: ClassVar[str] = "email"

    def __init__(self, settings: Settings) -> None:
        if settings.smtp_host is None:
            raise ValueError("SMTP_HOST must be set for the email notifier")
        if settings.smtp_starttls and settings.smtp_use_tls:
            raise ValueError("SMTP_STARTTLS and SMTP_USE_TLS exclude each other: set one")
        self._host = settings.smtp_host
        self._settings = settings

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        return cls(settings)

    def build_message(self, notification: Notification) -> EmailMessage:
        recipients = notification.recipients or self._settings.notify_email_to
        if not recipients:
            raise NoRecipientsError(
                f"notification {notification.id} names no recipient and NOTIFY_EMAIL_TO is empty"
            )
        sender = self._settings.smtp_from
        message = EmailMessage()
        message["From"] = sender
        message["To"] = ", ".join(recipients)
        message["Subject"] = _one_line(notification.subject)
        message["Date"] = formatdate(usegmt=True)
        message["Message-ID"] = message_id(notification.id, sender)
        message["X-Nexpo-Event"] = _one_line(notification.event)
        message.set_content(notification.body)
        return message

    async def send(self, notification: Notification) -> None:
        message = self.build_message(notification)
        settings = self._settings
        password = settings.smtp_password.get_secret_value() if settings.smtp_password else None
        target = f"{self._host}:{settings.smtp_port}"
        try:
            refused, _ = await aiosmtplib.send(
                message,
                hostname=self._host,
                port=settings.smtp_port,
                username=settings.smtp_username,
                password=password if settings.smtp_username else None,
                use_tls=settings.smtp_use_tls,
                # Explicit, because aiosmtplib's default (None) upgrades whenever offered.
                start_tls=settings.smtp_starttls,
                timeout=settings.smtp_timeout_seconds,
            )
        except aiosmtplib.SMTPRecipientsRefused as error:
            # Every recipient refused: retry if any refusal was temporary.
            codes = [refusal.code for refusal in error.recipients]
            reasons = "; ".join(f"{r.recipient}: {r.code} {r.message}" for r in error.recipients)
            if any(400 <= code < 500 for code in codes):
                raise NotifierUnavailableError(f"SMTP {target} refused: {reasons}") from error
            raise NotificationRejectedError(
                f"SMTP {target} refused: {reasons}", status=max(codes)
            ) from error
        except aiosmtplib.SMTPResponseException as error:
            reason = f"SMTP {target} answered {error.code} {error.message}"
            if 400 <= error.code < 500:
                raise NotifierUnavailableError(reason) from error
            raise NotificationRejectedError(reason, status=error.code) from error
        except aiosmtplib.SMTPNotSupported as error:
            # STARTTLS or AUTH asked for but not offered: a configuration mistake.
            raise NotificationRejectedError(f"SMTP {target}: {error.message}") from error
        except (aiosmtplib.SMTPException, OSError) as error:
            raise NotifierUnavailableError(f"SMTP {target} unreachable: {error}") from error
        if refused:
            # Delivered to the others: a retry would send them a duplicate, so only report.
            log.warning(
                "email for notification %s refused for %s",
                notification.id,
                "; ".join(f"{rcpt}: {r.code} {r.message}" for rcpt, r in refused.items()),
            )
        log.info(
            "email for notification %s (%s) sent via %s",
            notification.id,
            notification.event,
            target,
        )
