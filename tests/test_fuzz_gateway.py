"""Schemathesis against the gateway's own OpenAPI schema, over real HTTP.

The gateway (`nexpo-workflows api`) and a worker run as processes on the session's Temporal
server with the embedded SQLite store. Every operation gets generated requests (valid and
invalid); no answer may be a 5xx or break the schema. At least 1,000 requests are sent.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import checks

from nexpo_workflows.ports import free_port
from tests.conftest import API_KEY, BIN_DIR

EXAMPLES_PER_OPERATION = 200
MINIMUM_REQUESTS = 1000
sent: list[str] = []


def _wait_ready(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, "the gateway exited"
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError("the gateway did not start")


@pytest.fixture(scope="module")
def gateway_url(
    temporal_server_address: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    data = tmp_path_factory.mktemp("fuzz")
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "ENABLE_"))},
        "ENABLE_TEMPORAL": "true",
        "TEMPORAL_SERVER_URL": temporal_server_address,
        "TEMPORAL_TASK_QUEUE": f"fuzz-{port}",
        "DATA_DIR": str(data),
        "API_PORT": str(port),
        "METRICS_BIND_ADDRESS": "off",
        "API_METRICS_BIND_ADDRESS": f"127.0.0.1:{free_port()}",
        "API_KEY_HASHES": _api_key_hash(),
        "HEALTH_CHECK_TIMEOUT_SECONDS": "2",
        "LOG_LEVEL": "WARNING",
    }
    log = (data / "processes.log").open("wb")
    processes = [
        subprocess.Popen(
            [str(BIN_DIR / "nexpo-workflows"), command], env=env, stdout=log, stderr=log
        )
        for command in ("worker", "api")
    ]
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, processes[1])
        yield url
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=30)
        log.close()


def _api_key_hash() -> str:
    from nexpo_workflows.api.auth import hash_api_key

    return hash_api_key(API_KEY)


@pytest.fixture(scope="module")
def api_schema(gateway_url: str) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{gateway_url}/openapi.json")


def test_no_server_error_and_no_schema_violation(api_schema: schemathesis.BaseSchema) -> None:
    # Hypothesis drives each operation directly: schemathesis' pytest plugin predates pytest 9.
    for result in api_schema.get_all_operations():
        operation = result.ok()  # type: ignore[union-attr]

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        def check(case: Any) -> None:
            sent.append(f"{case.method} {case.path}")
            case.call_and_validate(
                headers={"X-API-Key": API_KEY},
                timeout=30,
                # Schema-valid emails on reserved domains (.test, .invalid) are refused on
                # purpose, which OpenAPI's `email` format cannot express.
                excluded_checks=[checks.positive_data_acceptance],
            )

        check()


def test_at_least_a_thousand_requests_were_sent() -> None:
    if not sent:
        pytest.skip("run with the fuzzing test above")
    operations = set(sent)
    print(f"\nschemathesis: {len(sent)} requests over {len(operations)} operations")
    assert len(sent) >= MINIMUM_REQUESTS
    assert {
        "POST /api/users",
        "GET /api/users/{user_id}",
        "DELETE /api/users/{user_id}",
    } <= operations
