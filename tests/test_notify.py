"""Email and webhook notifiers against a real SMTP server and a real HTTP receiver."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from nexpo_workflows.config import ConfigError, Settings, load_settings
from nexpo_workflows.notify import (
    NoRecipientsError,
    Notification,
    NotificationRejectedError,
    Notifier,
    NotifierUnavailableError,
    enabled_notifiers,
)
from nexpo_workflows.notify.log import LogNotifier
from nexpo_workflows.notify.smtp import EmailNotifier, message_id
from nexpo_workflows.notify.webhook import WebhookNotifier, signature, verify_signature
from nexpo_workflows.ports import free_port
from tests.conftest import SMTP_PASSWORD, WEBHOOK_SECRET
from tests.servers import HOST
from tests.servers.smtp import SMTPServer, running_smtp
from tests.servers.webhook import running_webhook_receiver

SENDER = "Nexpo <workflows@nexpo.test>"
NOTIFICATION = Notification(
    id="onboarding-42/welcome",
    event="user.onboarded",
    subject="Welcome, Ada",
    body="Your account is ready.\nSee you soon.",
    recipients=["ada@example.test", "ops@example.test"],
    data={"user_id": "42", "databases": ["sqlite", "postgres"]},
)


def email_settings(server: SMTPServer, **overrides: Any) -> Settings:
    return Settings(
        _env_file=None, smtp_host=server.host, smtp_port=server.port, smtp_from=SENDER, **overrides
    )


async def send_email(settings: Settings, notification: Notification = NOTIFICATION) -> None:
    notifier = EmailNotifier.from_settings(settings)
    try:
        await notifier.send(notification)
    finally:
        await notifier.close()


@asynccontextmanager
async def webhook_notifier(*urls: str) -> AsyncIterator[WebhookNotifier]:
    # A short backoff keeps the retry tests fast; the schedule itself is the same.
    notifier = WebhookNotifier(
        list(urls), SecretStr(WEBHOOK_SECRET), timeout_seconds=5, backoff_seconds=0.01
    )
    try:
        yield notifier
    finally:
        await notifier.close()


# --- Email -------------------------------------------------------------------------------


async def test_email_arrives_with_its_headers_and_body() -> None:
    async with running_smtp() as server:
        await send_email(email_settings(server))
        await send_email(email_settings(server))

    first, retried = server.messages
    assert first.mail_from == "workflows@nexpo.test"
    assert first.rcpt_tos == NOTIFICATION.recipients
    message = first.message
    assert message["From"] == SENDER
    assert message["To"] == "ada@example.test, ops@example.test"
    assert message["Subject"] == "Welcome, Ada"
    assert message["X-Nexpo-Event"] == "user.onboarded"
    assert message.get_content_type() == "text/plain"
    assert message.get_content().rstrip("\n") == NOTIFICATION.body
    assert message["Message-ID"] == message_id(NOTIFICATION.id, SENDER)
    assert message["Message-ID"].endswith("@nexpo.test>")
    # The same notification sent again is recognisably the same email.
    assert retried.message["Message-ID"] == message["Message-ID"]
    assert first.login is None


async def test_email_goes_to_notify_email_to_when_the_notification_names_nobody() -> None:
    nobody = NOTIFICATION.model_copy(update={"recipients": []})
    async with running_smtp() as server:
        await send_email(
            email_settings(server, notify_email_to="team@example.test, lead@example.test"),
            nobody,
        )
        with pytest.raises(NoRecipientsError, match="NOTIFY_EMAIL_TO"):
            await send_email(email_settings(server), nobody)
    [mail] = server.messages
    assert mail.rcpt_tos == ["team@example.test", "lead@example.test"]
    assert mail.message["To"] == "team@example.test, lead@example.test"


async def test_email_logs_in_with_the_configured_user(caplog: pytest.LogCaptureFixture) -> None:
    async with running_smtp(users={"nexpo": SMTP_PASSWORD}) as server:
        await send_email(email_settings(server, smtp_username="nexpo", smtp_password=SMTP_PASSWORD))
        with pytest.raises(NotificationRejectedError) as refused:
            await send_email(email_settings(server, smtp_username="nexpo", smtp_password="wrong"))
    [mail] = server.messages
    assert mail.login == "nexpo"
    assert refused.value.status == 535
    assert SMTP_PASSWORD not in caplog.text


async def test_email_temporary_refusal_is_retryable() -> None:
    async with running_smtp(reject="451 4.3.0 Try again later") as server:
        with pytest.raises(NotifierUnavailableError, match="451"):
            await send_email(email_settings(server))
    assert server.messages == []


async def test_email_permanent_rejection_is_not_retryable() -> None:
    async with running_smtp(reject="550 5.7.1 Message refused", reject_at="DATA") as server:
        with pytest.raises(NotificationRejectedError, match="550") as rejected:
            await send_email(email_settings(server))
    assert rejected.value.status == 550
    assert server.messages == []


async def test_email_to_an_unreachable_server_is_retryable() -> None:
    settings = Settings(_env_file=None, smtp_host=HOST, smtp_port=free_port(HOST))
    with pytest.raises(NotifierUnavailableError, match="unreachable"):
        await send_email(settings)


# --- Webhooks ----------------------------------------------------------------------------


def expected_body() -> bytes:
    return json.dumps(NOTIFICATION.model_dump(mode="json"), separators=(",", ":")).encode()


async def test_webhook_reaches_every_url_signed() -> None:
    async with (
        running_webhook_receiver(WEBHOOK_SECRET) as one,
        running_webhook_receiver(WEBHOOK_SECRET) as two,
        webhook_notifier(one.url("/a"), two.url("/b?token=t")) as notifier,
    ):
        await notifier.send(NOTIFICATION)

    for receiver, path in ((one, "/a"), (two, "/b")):
        [delivery] = receiver.requests
        assert delivery.verified
        assert delivery.path == path
        assert delivery.body == expected_body()
        assert json.loads(delivery.body) == NOTIFICATION.model_dump(mode="json")
        assert delivery.headers["Content-Type"] == "application/json"
        assert delivery.headers["X-Nexpo-Delivery"] == NOTIFICATION.id
        assert abs(int(delivery.headers["X-Nexpo-Timestamp"]) - time.time()) < 60


async def test_signature_covers_body_and_timestamp() -> None:
    async with (
        running_webhook_receiver(WEBHOOK_SECRET) as receiver,
        webhook_notifier(receiver.url()) as notifier,
    ):
        await notifier.send(NOTIFICATION)
    [delivery] = receiver.requests
    timestamp = delivery.headers["X-Nexpo-Timestamp"]
    header = delivery.headers["X-Nexpo-Signature"]
    assert header.startswith("sha256=")
    assert verify_signature(WEBHOOK_SECRET, timestamp, delivery.body, header)

    tampered = delivery.body.replace(b"Ada", b"Eve")
    assert not verify_signature(WEBHOOK_SECRET, timestamp, tampered, header)
    assert not verify_signature(WEBHOOK_SECRET, str(int(timestamp) + 1), delivery.body, header)
    assert not verify_signature("another-secret", timestamp, delivery.body, header)
    assert not verify_signature(WEBHOOK_SECRET, "not-a-time", delivery.body, header)
    # A replay: correctly signed, but long ago.
    old = str(int(time.time()) - 3600)
    replayed = signature(WEBHOOK_SECRET, old, delivery.body)
    assert not verify_signature(WEBHOOK_SECRET, old, delivery.body, replayed)
    assert verify_signature(WEBHOOK_SECRET, old, delivery.body, replayed, max_age_seconds=None)


async def test_webhook_retries_unavailable_receiver_and_delivers_once() -> None:
    async with (
        running_webhook_receiver(WEBHOOK_SECRET, fail_first=2) as receiver,
        webhook_notifier(receiver.url()) as notifier,
    ):
        await notifier.send(NOTIFICATION)
    assert [r.status for r in receiver.requests] == [503, 503, 200]
    assert all(r.verified for r in receiver.requests)
    assert len(receiver.delivered) == 1


async def test_webhook_gives_up_naming_the_url_without_its_query() -> None:
    async with (
        running_webhook_receiver(WEBHOOK_SECRET, fail_first=10) as receiver,
        webhook_notifier(receiver.url("/hook?token=sekrit-token")) as notifier,
    ):
        with pytest.raises(NotifierUnavailableError) as unavailable:
            await notifier.send(NOTIFICATION)
    assert receiver.url("/hook") in str(unavailable.value)
    assert "503" in str(unavailable.value)
    assert "sekrit-token" not in str(unavailable.value)
    assert len(receiver.requests) == 3
    assert receiver.delivered == []


async def test_webhook_client_error_is_a_rejection_without_retries() -> None:
    async with (
        running_webhook_receiver(WEBHOOK_SECRET, status=400) as receiver,
        webhook_notifier(receiver.url()) as notifier,
    ):
        with pytest.raises(NotificationRejectedError, match="400") as rejected:
            await notifier.send(NOTIFICATION)
    assert rejected.value.status == 400
    assert len(receiver.requests) == 1


async def test_webhook_to_an_unreachable_url_is_retryable() -> None:
    async with webhook_notifier(f"http://{HOST}:{free_port(HOST)}/hook") as notifier:
        with pytest.raises(NotifierUnavailableError, match="unreachable"):
            await notifier.send(NOTIFICATION)


# --- Registry and settings ------------------------------------------------------------


async def close_all(notifiers: dict[str, Notifier]) -> None:
    for notifier in notifiers.values():
        await notifier.close()


async def test_enabled_notifiers_follow_the_settings(receiver_url: str) -> None:
    both = enabled_notifiers(
        Settings(
            _env_file=None,
            smtp_host=HOST,
            webhook_urls=receiver_url,
            webhook_secret=WEBHOOK_SECRET,
        )
    )
    nothing = enabled_notifiers(Settings(_env_file=None))
    try:
        assert {name: type(n) for name, n in both.items()} == {
            "email": EmailNotifier,
            "webhook": WebhookNotifier,
        }
        assert {name: type(n) for name, n in nothing.items()} == {"log": LogNotifier}
    finally:
        await close_all(both | nothing)


@pytest.fixture
def receiver_url() -> str:
    return f"http://{HOST}:{free_port(HOST)}/hook"


def test_webhook_urls_without_a_secret_are_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)  # no stray .env
    monkeypatch.delenv("WEBHOOK_SECRET", raising=False)
    with pytest.raises(ConfigError, match="WEBHOOK_SECRET"):
        load_settings(webhook_urls="https://hooks.example.test/nexpo")
    settings = load_settings(
        webhook_urls="https://a.example.test/1, https://b.example.test/2",
        webhook_secret=WEBHOOK_SECRET,
    )
    assert settings.webhook_urls == ["https://a.example.test/1", "https://b.example.test/2"]
