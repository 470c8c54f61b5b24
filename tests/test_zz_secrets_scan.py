"""Runs last (file order): no password, API key or credential the suite used is in any
workflow history, log line or scraped metrics text.

Histories are read from the session's Temporal server and every payload is decoded, so a
secret would be found however deeply it sits in an input, result, failure or marker.
"""

from __future__ import annotations

import pytest
from temporalio.client import Client

from tests.conftest import CREDENTIALS_IN_USE, LOG_LINES, METRICS_SCRAPED, SUBMITTED_PASSWORDS
from tests.history_scan import history_payloads


async def test_no_secret_the_suite_used_is_in_histories_logs_or_metrics(client: Client) -> None:
    if not SUBMITTED_PASSWORDS:
        pytest.skip("run with the tests that submit passwords")
    secrets = SUBMITTED_PASSWORDS | CREDENTIALS_IN_USE
    scanned = 0
    hits = []
    async for execution in client.list_workflows():
        payloads = await history_payloads(client, execution.id)
        scanned += 1
        hits += [execution.id for secret in secrets if secret in payloads]
    assert scanned > 0
    assert LOG_LINES
    assert METRICS_SCRAPED
    hits += [line for line in LOG_LINES for secret in secrets if secret in line]
    hits += [text[:80] for text in METRICS_SCRAPED for secret in secrets if secret in text]
    print(
        f"\nscanned {scanned} histories, {len(LOG_LINES)} log lines, "
        f"{len(METRICS_SCRAPED)} metrics pages for {len(secrets)} secrets: {len(hits)} hits"
    )
    assert hits == []
