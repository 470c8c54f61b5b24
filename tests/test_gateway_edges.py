"""Every route of the gateway, with each dependency down: never a 500, always a documented
status; a dependency that is down is a 503 naming it, with a Retry-After.

The routes come from ``app.routes``, so a route added later is walked too (and fails here
until it has a sample body below, if it takes one)."""

from __future__ import annotations

import base64
import os
import re
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import RetryConfig

from nexpo_workflows.api.app import create_app
from nexpo_workflows.api.deps import GatewayState
from nexpo_workflows.config import Settings
from nexpo_workflows.devserver import start_dev_server
from nexpo_workflows.ports import free_port
from nexpo_workflows.services import Services
from tests.conftest import API_KEY, run_cli
from tests.sync_source import ITEMS_DATASET

KEYS = f"k1:{base64.b64encode(os.urandom(32)).decode()}"

PATH_VALUES = {
    "workflow_id": "no-such-workflow",
    "user_id": "no-such-user",
    # Fresh per run: the walk starts a tenant's workflow and a monitor on the session's server.
    "tenant_id": f"tenant-{uuid.uuid4().hex[:8]}",
    "service": f"edges-{uuid.uuid4().hex[:8]}",
    "dataset": ITEMS_DATASET["name"],
    "request_id": "no-such-request",
    "content_id": "no-such-content",
}


def _payload(encoding: bytes, data: bytes, **metadata: bytes) -> dict[str, Any]:
    fields = {"encoding": encoding, **metadata}
    return {
        "metadata": {key: base64.b64encode(value).decode() for key, value in fields.items()},
        "data": base64.b64encode(data).decode(),
    }


SAMPLE_BODIES: dict[str, Any] = {
    "POST /api/users": {"email": "edges@example.com", "name": "Edge", "password": "a-password"},
    "POST /api/cloud/replicate": {"key": "an/object", "source": "local"},
    "POST /api/cloud/failover": {
        "service": PATH_VALUES["service"],
        "primary": {"store": "local"},
        "secondary": {"store": "local"},
    },
    "POST /api/cloud/failover/{service}/active-side": {"side": "secondary", "reason": "drill"},
    "POST /api/cloud/failover/{service}/hold": {"reason": "drill"},
    "POST /api/cloud/failover/{service}/release": {"reason": "drill over"},
    "POST /api/decisions": {
        "request_id": f"edges-{uuid.uuid4().hex[:8]}",
        "customer_email": "customer@example.com",
        "subject": "Refund",
        "message": "Please refund my order.",
    },
    "POST /api/decisions/{request_id}/approval": {"approver": "ops", "approved": True},
    "POST /api/sync/{dataset}": {"full": False},
    "PUT /api/sync/{dataset}/schedule": {"every": "5m"},
    "POST /api/content": {"topic": "Edges"},
    "POST /api/content/{content_id}/review": {"reviewer": "ops", "decision": "approve"},
    "POST /codec/encode": {"payloads": [_payload(b"json/plain", b'"hello"')]},
    # A ciphertext too short to hold a nonce and a tag.
    "POST /codec/decode": {
        "payloads": [_payload(b"binary/encrypted", b"short", **{"encryption-key-id": b"k1"})]
    },
}


@dataclass
class Answer:
    route: str
    status: int
    body: Any
    retry_after: str | None


def _documented(app: FastAPI, route: APIRoute, method: str) -> set[int]:
    responses = app.openapi()["paths"][route.path_format][method.lower()]["responses"]
    return {int(code) for code in responses}


def api_routes(routes: Sequence[BaseRoute]) -> Iterator[APIRoute]:
    """The API routes, also those of included routers (FastAPI keeps an included router as
    one entry of ``app.routes``); not the OpenAPI documents and their UI."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        included = getattr(route, "original_router", None)
        if included is not None:
            yield from api_routes(included.routes)


def test_the_walk_reaches_every_documented_operation() -> None:
    app = create_app(GatewayState(Services.from_settings(Settings(_env_file=None)), None, None))
    walked = {
        (route.path_format, method.lower())
        for route in api_routes(app.routes)
        for method in route.methods or ()
    }
    documented = {
        (path, method)
        for path, operations in app.openapi()["paths"].items()
        for method in operations
    }
    assert walked == documented


async def walk(app: FastAPI) -> list[Answer]:
    """Call every method of every API route once, with credentials and a valid request."""
    answers = []
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport,
        base_url="http://gateway",
        headers={"X-API-Key": API_KEY},
        timeout=120,
    ) as http:
        for route in api_routes(app.routes):
            path = re.sub(
                r"{(\w+)}",
                lambda match: PATH_VALUES[match.group(1)],
                route.path_format,
            )
            for method in sorted(route.methods or ()):
                name = f"{method} {route.path_format}"
                body = SAMPLE_BODIES.get(name)
                assert route.body_field is None or body is not None, f"add a sample body for {name}"
                response = await http.request(method, path, json=body)
                documented = _documented(app, route, method)
                assert response.status_code < 500 or response.status_code == 503, (
                    name,
                    response.status_code,
                    response.text,
                )
                assert response.status_code in documented, (
                    name,
                    response.status_code,
                    sorted(documented),
                    response.text,
                )
                answers.append(
                    Answer(
                        name,
                        response.status_code,
                        response.json() if response.content else None,
                        response.headers.get("Retry-After"),
                    )
                )
    return answers


def assert_unavailable_names(answers: list[Answer], *dependencies: str) -> None:
    """Every 503 names one of ``dependencies`` and says when to try again."""
    for answer in answers:
        if answer.status == 503:
            assert answer.retry_after is not None, answer
            assert any(name in str(answer.body) for name in dependencies), answer


@pytest.fixture
def edge_settings(
    make_settings: Callable[..., Settings], postgres_url: str
) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        return make_settings(
            **{
                "enable_postgres": True,
                "postgres_url": postgres_url,
                "enable_sqlite": True,
                "sync_datasets": [ITEMS_DATASET],
                "payload_encryption_keys": KEYS,
                "health_check_timeout_seconds": 1,
                "health_check_worker_wait_seconds": 1,
                # No worker polls this test's queue: queries and updates wait this long.
                "temporal_answer_timeout_seconds": 2,
                **overrides,
            }
        )

    return make


@pytest.fixture
async def stopped_temporal(tmp_path: Path) -> Client:
    """A client connected to a Temporal server that has since stopped."""
    server = await start_dev_server(
        host="127.0.0.1", port=free_port(), log_path=tmp_path / "temporal.log"
    )
    try:
        # Listening is not serving yet ("Frontend is not healthy yet"): wait for it with the
        # default retries first, then make the client the test uses.
        await Client.connect(server.address)
        client = await Client.connect(
            server.address,
            # Few retries, so each call fails in about a second rather than ten.
            data_converter=pydantic_data_converter,
            retry_config=RetryConfig(max_retries=2, max_elapsed_time_millis=1000),
        )
    finally:
        await server.stop()
    return client


async def test_every_route_with_temporal_down(
    stopped_temporal: Client, edge_settings: Callable[..., Settings]
) -> None:
    services = Services.from_settings(edge_settings(), stopped_temporal)
    try:
        answers = await walk(create_app(GatewayState(services, stopped_temporal, None)))
    finally:
        await services.close()
    by_route = {answer.route: answer for answer in answers}
    assert_unavailable_names(answers, "temporal")
    for started in (
        "POST /api/content",
        "POST /api/cloud/replicate",
        "PUT /api/cloud/tenants/{tenant_id}",
        "GET /api/sync/{dataset}",
    ):
        assert by_route[started].status == 503, by_route[started]
        assert by_route[started].body["dependency"] == "temporal"
    assert by_route["POST /codec/decode"].status == 400
    assert "shorter than a nonce and a tag" in by_route["POST /codec/decode"].body["detail"]


async def test_every_route_with_a_database_down(
    client: Client, edge_settings: Callable[..., Settings]
) -> None:
    stopped = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    services = Services.from_settings(edge_settings(postgres_url=stopped), client)
    try:
        answers = await walk(create_app(GatewayState(services, client, None)))
    finally:
        await services.close()
    # No worker runs them; some ids (the dataset's sync) are fixed, so other tests need them gone.
    for answer in answers:
        if answer.status == 202:
            await client.get_workflow_handle(answer.body["workflowId"]).terminate("test over")
    by_route = {answer.route: answer for answer in answers}
    # /readyz: no worker polls this test's queue, so the check names the missing worker.
    assert_unavailable_names(answers, "postgres", "worker")
    lookup = by_route["GET /api/users/{user_id}"]
    assert lookup.status == 503, lookup
    assert lookup.body["dependency"] == "database"
    assert lookup.retry_after is not None


async def test_the_cli_says_in_one_line_what_temporal_answered(
    cli: list[str], cli_env: dict[str, str]
) -> None:
    """A Temporal error the command does not expect (here: no such namespace) is one line and
    exit 1, never a traceback."""
    env = {**cli_env, "TEMPORAL_NAMESPACE": f"missing-{uuid.uuid4().hex[:8]}"}
    result = await run_cli([*cli, "cloud", "provision", "tenant-edges"], env)
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"nexpo-workflows: temporal: Namespace {env['TEMPORAL_NAMESPACE']} is not found."
    ]
