"""Signed webhooks, on when WEBHOOK_URLS is set (WEBHOOK_SECRET is then required).

Each notification is POSTed as JSON (``Notification.model_dump(mode="json")``) to every URL,
with these headers:

- ``X-Nexpo-Delivery``: the notification id, the same on every retry, so a receiver can
  drop duplicates;
- ``X-Nexpo-Timestamp``: unix seconds when this attempt was signed;
- ``X-Nexpo-Signature``: ``sha256=`` and the hex HMAC-SHA256, under WEBHOOK_SECRET, of
  ``f"{timestamp}."`` followed by the exact body bytes.

The timestamp is signed with the body so a captured request cannot be replayed later: a
receiver checks both with :func:`verify_signature`, which refuses old timestamps.

A send tries each URL a few times (connection errors, 408, 429, 5xx) with a short backoff;
Temporal retries the activity on top. Any other 4xx (or a redirect) is a rejection.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from typing import ClassVar, Self

import httpx
from pydantic import SecretStr

from nexpo_workflows.config import Settings
from nexpo_workflows.errors import first_line
from nexpo_workflows.notify.base import (
    Notification,
    NotificationRejectedError,
    Notifier,
    NotifierUnavailableError,
)

log = logging.getLogger(__name__)

RETRYABLE_STATUSES = frozenset({408, 429})
# Small on purpose: this runs inside one activity attempt.
DEFAULT_ATTEMPTS = 3
DEFAULT_BACKOFF_SECONDS = 0.5
MAX_WAIT_SECONDS = 5.0
# How old a timestamp verify_signature accepts by default (and how far in the future).
DEFAULT_MAX_AGE_SECONDS = 300.0


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """The ``X-Nexpo-Signature`` value for ``body`` sent at ``timestamp``."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return f"sha256={digest.hexdigest()}"


def verify_signature(
    secret: str,
    timestamp: str,
    body: bytes,
    header: str,
    *,
    max_age_seconds: float | None = DEFAULT_MAX_AGE_SECONDS,
) -> bool:
    """Whether ``header`` (X-Nexpo-Signature) signs ``body`` at ``timestamp`` (X-Nexpo-Timestamp)
    under ``secret``, and the timestamp is within ``max_age_seconds`` of now (None: any age)."""
    if not timestamp.isdigit():
        return False
    if max_age_seconds is not None and abs(time.time() - int(timestamp)) > max_age_seconds:
        return False
    return hmac.compare_digest(signature(secret, timestamp, body), header)


def shown_url(url: str) -> str:
    """The URL without query, fragment or user info, which may hold tokens."""
    parsed = httpx.URL(url)
    return str(parsed.copy_with(query=None, fragment=None, userinfo=b""))


class WebhookNotifier(Notifier):
    name: ClassVar[str] = "webhook"

    def __init__(
        self,
        urls: list[str],
        secret: SecretStr,
        *,
        timeout_seconds: float,
        attempts: int = DEFAULT_ATTEMPTS,
        backoff_seconds: float = DEFAULT_BACKOFF_SECONDS,
    ) -> None:
        if not urls:
            raise ValueError("WEBHOOK_URLS must name at least one URL")
        self._urls = list(urls)
        self._secret = secret
        self._attempts = max(attempts, 1)
        self._backoff_seconds = backoff_seconds
        # One pool for every URL and send; redirects are not followed (see _deliver).
        self._client = httpx.AsyncClient(
            timeout=timeout_seconds, headers={"User-Agent": "nexpo-workflows"}
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        if settings.webhook_secret is None:
            raise ValueError("WEBHOOK_SECRET must be set when WEBHOOK_URLS is")
        return cls(
            settings.webhook_urls,
            settings.webhook_secret,
            timeout_seconds=settings.webhook_timeout_seconds,
        )

    async def send(self, notification: Notification) -> None:
        body = json.dumps(notification.model_dump(mode="json"), separators=(",", ":")).encode()
        results = await asyncio.gather(
            *(self._deliver(url, notification.id, body) for url in self._urls),
            return_exceptions=True,
        )
        failures = [result for result in results if isinstance(result, BaseException)]
        for failure in failures:
            if not isinstance(failure, NotifierUnavailableError | NotificationRejectedError):
                raise failure
        # A retry resends to the URLs that took it too; they drop it by X-Nexpo-Delivery.
        unavailable = [f for f in failures if isinstance(f, NotifierUnavailableError)]
        if unavailable:
            raise NotifierUnavailableError("; ".join(map(str, unavailable))) from unavailable[0]
        rejected = [f for f in failures if isinstance(f, NotificationRejectedError)]
        if rejected:
            raise NotificationRejectedError(
                "; ".join(map(str, rejected)), status=rejected[0].status
            ) from rejected[0]
        log.info(
            "webhook for notification %s (%s) delivered to %d URL(s)",
            notification.id,
            notification.event,
            len(self._urls),
        )

    async def _deliver(self, url: str, delivery: str, body: bytes) -> None:
        shown = shown_url(url)
        reason = ""
        for attempt in range(1, self._attempts + 1):
            # Signed per attempt, so a late retry is not refused as a replay.
            timestamp = str(int(time.time()))
            headers = {
                "Content-Type": "application/json",
                "X-Nexpo-Delivery": delivery,
                "X-Nexpo-Timestamp": timestamp,
                "X-Nexpo-Signature": signature(self._secret.get_secret_value(), timestamp, body),
            }
            wait = self._backoff_seconds * 2 ** (attempt - 1)
            try:
                response = await self._client.post(url, content=body, headers=headers)
            except httpx.TransportError as error:
                reason = f"unreachable: {first_line(error)}"
            else:
                status = response.status_code
                if response.is_success:
                    return
                if status < 500 and status not in RETRYABLE_STATUSES:
                    answer = " ".join(response.text.split())[:200]
                    raise NotificationRejectedError(
                        f"webhook {shown} answered {status}: {answer}", status=status
                    )
                reason = f"answered {status}"
                wait = _retry_after(response) or wait
            if attempt < self._attempts:
                log.info("webhook %s %s; trying again (attempt %d)", shown, reason, attempt + 1)
                await asyncio.sleep(min(wait, MAX_WAIT_SECONDS))
        raise NotifierUnavailableError(f"webhook {shown} {reason} ({self._attempts} attempts)")

    async def close(self) -> None:
        await self._client.aclose()


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After", "")
    return float(value) if value.isdigit() else None
