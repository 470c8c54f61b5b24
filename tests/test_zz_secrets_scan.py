"""Runs last (file order): no password the suite submitted is in any workflow history.

Histories are read from the session's Temporal server and every payload is decoded, so a
password would be found however deeply it sits in an input, result, failure or marker.
"""

from __future__ import annotations

import pytest
from temporalio.client import Client

from tests.conftest import SUBMITTED_PASSWORDS
from tests.history_scan import history_payloads


async def test_no_submitted_password_is_in_any_workflow_history(client: Client) -> None:
    if not SUBMITTED_PASSWORDS:
        pytest.skip("run with the tests that submit passwords")
    scanned = 0
    hits = []
    async for execution in client.list_workflows(
        "WorkflowType = 'UserOnboardingWorkflow' OR WorkflowType = 'UserOffboardingWorkflow'"
    ):
        payloads = await history_payloads(client, execution.id)
        scanned += 1
        hits += [execution.id for password in SUBMITTED_PASSWORDS if password in payloads]
    assert scanned > 0
    assert hits == []
