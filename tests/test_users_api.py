"""POST/GET/DELETE /api/users in both modes, against real Temporal and real databases."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from temporalio.client import Client, WorkflowExecutionStatus

from nexpo_workflows.api.app import create_app
from nexpo_workflows.api.deps import GatewayState
from nexpo_workflows.config import Settings
from nexpo_workflows.providers import UserRecord, enabled_providers
from nexpo_workflows.services import Services
from nexpo_workflows.users.models import SagaResult
from nexpo_workflows.users.service import onboarding_workflow_id
from tests.conftest import ALL_PROVIDERS, API_KEY, SUBMITTED_PASSWORDS, saga_worker, stored
from tests.history_scan import history_payloads

PROVIDERS = ALL_PROVIDERS
AUTH = {"X-API-Key": API_KEY}


def new_user() -> dict[str, str]:
    unique = uuid.uuid4().hex[:12]
    password = f"plain-text-secret-{unique}"
    SUBMITTED_PASSWORDS.add(password)
    return {"email": f"grace.{unique}@example.com", "name": "Grace Hopper", "password": password}


@asynccontextmanager
async def gateway(client: Client, settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The gateway with ENABLE_TEMPORAL=true, without a worker."""
    services = Services.from_settings(settings, client)
    app = create_app(GatewayState(services, client, metrics_url=None))
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://gw", headers=AUTH
        ) as http:
            yield http
    finally:
        await services.close()


@pytest.fixture
async def durable(client: Client, saga_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The gateway with ENABLE_TEMPORAL=true and a worker on its task queue."""
    async with saga_worker(client, saga_settings), gateway(client, saga_settings) as http:
        yield http


@pytest.fixture
async def in_process(saga_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The gateway with ENABLE_TEMPORAL=false: the saga runs inside it."""
    settings = saga_settings.model_copy(update={"enable_temporal": False})
    services = Services.from_settings(settings)
    app = create_app(GatewayState(services, None, metrics_url=None))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://gw", headers=AUTH
    ) as http:
        yield http
    await services.close()


async def test_post_starts_the_saga_and_answers_202(
    durable: httpx.AsyncClient, client: Client, saga_settings: Settings
) -> None:
    body = new_user()
    response = await durable.post("/api/users", json=body)
    assert response.status_code == 202, response.text
    accepted = response.json()
    workflow_id = accepted["workflowId"]
    assert accepted["statusUrl"].endswith(f"/api/workflows/{workflow_id}")
    result = await client.get_workflow_handle(workflow_id, result_type=SagaResult).result()
    assert all(o.status == "created" for o in result.providers)

    status = (await durable.get(f"/api/workflows/{workflow_id}")).json()
    assert status["status"] == "completed"
    user = (await durable.get(f"/api/users/{result.user_id}")).json()
    assert user["email"] == body["email"]
    assert user["stored_in"] == dict.fromkeys(PROVIDERS, True)
    assert "password_hash" not in user

    # The password never reaches Temporal: only its Argon2id hash does.
    history = await history_payloads(client, workflow_id)
    assert body["password"] not in history
    assert "$argon2id$" in history
    records = await stored(saga_settings, result.user_id)
    assert all(r is not None and r.password_hash.startswith("$argon2id$") for r in records.values())


async def test_the_same_idempotency_key_starts_one_saga(
    durable: httpx.AsyncClient, client: Client
) -> None:
    body = new_user()
    headers = {"Idempotency-Key": f"key-{uuid.uuid4()}"}
    first = await durable.post("/api/users", json=body, headers=headers)
    second = await durable.post("/api/users", json=body, headers=headers)
    assert (first.status_code, second.status_code) == (202, 202)
    workflow_id = first.json()["workflowId"]
    assert second.json()["workflowId"] == workflow_id
    await client.get_workflow_handle(workflow_id).result()
    for _ in range(50):  # visibility is eventually consistent
        runs = [w async for w in client.list_workflows(f"WorkflowId = '{workflow_id}'")]
        if runs:
            break
        await asyncio.sleep(0.1)
    assert len(runs) == 1

    # Without the key (or with another), the same email is a conflict naming the saga.
    again = await durable.post("/api/users", json=body)
    assert again.status_code == 409
    assert again.json()["detail"]["workflowId"] == workflow_id


async def test_delete_offboards_everywhere(
    durable: httpx.AsyncClient, client: Client, saga_settings: Settings
) -> None:
    accepted = (await durable.post("/api/users", json=new_user())).json()
    created = await client.get_workflow_handle(
        accepted["workflowId"], result_type=SagaResult
    ).result()
    response = await durable.delete(f"/api/users/{created.user_id}")
    assert response.status_code == 202
    await client.get_workflow_handle(response.json()["workflowId"]).result()
    assert await stored(saga_settings, created.user_id) == dict.fromkeys(PROVIDERS)
    assert (await durable.get(f"/api/users/{created.user_id}")).status_code == 404


async def test_in_process_mode_creates_conflicts_and_deletes(
    in_process: httpx.AsyncClient, saga_settings: Settings
) -> None:
    body = new_user()
    created = await in_process.post("/api/users", json=body)
    assert created.status_code == 201, created.text
    user = created.json()
    assert user["stored_in"] == dict.fromkeys(PROVIDERS, True)

    duplicate = await in_process.post("/api/users", json={**body, "name": "Someone Else"})
    assert duplicate.status_code == 409
    result = SagaResult.model_validate(duplicate.json()["detail"]["result"])
    assert result.failure_kind == "DuplicateEmail"
    assert await stored(saga_settings, result.user_id) == dict.fromkeys(PROVIDERS)

    deleted = await in_process.delete(f"/api/users/{user['id']}")
    assert deleted.status_code == 200
    assert {o["status"] for o in deleted.json()["providers"]} == {"deleted"}
    assert await stored(saga_settings, user["id"]) == dict.fromkeys(PROVIDERS)


async def test_in_process_idempotency_key_replays_the_same_user(
    in_process: httpx.AsyncClient,
) -> None:
    body = new_user()
    headers = {"Idempotency-Key": f"key-{uuid.uuid4()}"}
    first = await in_process.post("/api/users", json=body, headers=headers)
    second = await in_process.post("/api/users", json=body, headers=headers)
    assert (first.status_code, second.status_code) == (201, 201)
    assert first.json()["id"] == second.json()["id"]


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"x": value}
    return value


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"email": "not-an-email"}, "email"),
        ({"password": "pw-1234"}, "password"),
        ({"name": "   "}, "name"),
        ({"profile": "not an object"}, "profile"),
        # What one of the databases would refuse is refused before any of them is asked.
        ({"name": "Ada\x00Lovelace"}, "name"),
        ({"profile": {"bio": "a\x00b"}}, "profile"),
        ({"profile": {"key\x00": 1}}, "profile"),
        ({"profile": {"big": 2**64}}, "profile"),
        ({"profile": nested(40)}, "profile"),
        ({"profile": {"long": "x" * 70_000}}, "profile"),
    ],
)
async def test_invalid_input_is_422_with_field_errors_and_writes_nothing(
    durable: httpx.AsyncClient,
    client: Client,
    saga_settings: Settings,
    change: dict[str, Any],
    field: str,
) -> None:
    body = {**new_user(), **change}
    response = await durable.post("/api/users", json=body)
    assert response.status_code == 422
    problems = response.json()["detail"]
    assert [p["loc"][-1] for p in problems] == [field]
    assert body["password"] not in response.text
    query = f"TaskQueue = '{saga_settings.temporal_task_queue}'"
    assert [w async for w in client.list_workflows(query)] == []


async def test_unknown_user_is_404(durable: httpx.AsyncClient) -> None:
    response = await durable.get(f"/api/users/{uuid.uuid4()}")
    assert response.status_code == 404


# --- POST /api/users?wait=true: the saga's outcome in one request -----------------------

WAIT = {"wait": "true"}


async def runs_of(client: Client, workflow_id: str, count: int) -> list[Any]:
    """The runs of ``workflow_id`` once visibility shows ``count`` of them (it lags)."""
    for _ in range(50):
        runs = [w async for w in client.list_workflows(f"WorkflowId = '{workflow_id}'")]
        if len(runs) >= count:
            return runs
        await asyncio.sleep(0.1)
    return runs


async def test_wait_answers_201_with_the_user_once_the_saga_completed(
    durable: httpx.AsyncClient, client: Client, saga_settings: Settings
) -> None:
    body = new_user()
    response = await durable.post("/api/users", json=body, params=WAIT)
    assert response.status_code == 201, response.text
    user = response.json()
    assert user["email"] == body["email"]
    assert user["stored_in"] == dict.fromkeys(PROVIDERS, True)
    workflow_id = onboarding_workflow_id(body["email"])
    description = await client.get_workflow_handle(workflow_id).describe()
    assert description.status is WorkflowExecutionStatus.COMPLETED
    assert body["password"] not in await history_payloads(client, workflow_id)


async def test_wait_answers_a_rolled_back_saga_with_its_reason_and_leaves_nothing(
    durable: httpx.AsyncClient, saga_settings: Settings
) -> None:
    body = new_user()
    # Another user already holds the email in one database only: the saga finds it there.
    taken = UserRecord(
        id=str(uuid.uuid4()),
        email=body["email"],
        name="Someone Else",
        password_hash="$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA",
        created_at=datetime.now(UTC).replace(microsecond=0),
    )
    postgres = enabled_providers(saga_settings)["postgres"]
    try:
        await postgres.create_user(taken)
    finally:
        await postgres.close()

    response = await durable.post("/api/users", json=body, params=WAIT)
    assert response.status_code == 409, response.text
    detail = response.json()["detail"]
    result = SagaResult.model_validate(detail["result"])
    assert result.failure_kind == "DuplicateEmail"
    assert f"a user with email {body['email']} exists" in detail["message"]
    statuses = {o.provider: o.status for o in result.providers}
    assert statuses["postgres"] == "failed"
    # PostgreSQL is the claim, written alone first: no other database was started.
    assert {s for p, s in statuses.items() if p != "postgres"} <= {"not_started"}
    assert await stored(saga_settings, result.user_id) == dict.fromkeys(PROVIDERS)
    assert (await stored(saga_settings, taken.id))["postgres"] is not None


async def test_wait_answers_a_database_failure_503_with_the_compensations(
    client: Client, saga_settings: Settings
) -> None:
    # SQLite keeps failing after its write until the saga's deadline: everything is undone.
    worker_settings = saga_settings.model_copy(update={"onboarding_timeout_seconds": 1.5})
    async with (
        saga_worker(client, worker_settings, sqlite={"create_fails": "after"}),
        gateway(client, saga_settings) as http,
    ):
        response = await http.post("/api/users", json=new_user(), params=WAIT)
    assert response.status_code == 503, response.text
    result = SagaResult.model_validate(response.json()["detail"]["result"])
    assert (result.status, result.failure_kind) == ("rolled_back", "SagaTimeout")
    statuses = {o.provider: o.status for o in result.providers}
    assert statuses == {**dict.fromkeys(PROVIDERS, "compensated"), "sqlite": "failed"}
    assert await stored(saga_settings, result.user_id) == dict.fromkeys(PROVIDERS)


async def test_a_retried_wait_with_the_same_key_answers_the_same(
    durable: httpx.AsyncClient, client: Client
) -> None:
    body = new_user()
    headers = {"Idempotency-Key": f"key-{uuid.uuid4()}"}
    first = await durable.post("/api/users", json=body, headers=headers, params=WAIT)
    second = await durable.post("/api/users", json=body, headers=headers, params=WAIT)
    assert (first.status_code, second.status_code) == (201, 201), second.text
    assert first.json() == second.json()
    assert len(await runs_of(client, onboarding_workflow_id(body["email"]), 1)) == 1

    other = {**body, "name": "Someone Else"}
    reused = await durable.post("/api/users", json=other, headers=headers, params=WAIT)
    assert reused.status_code == 422, reused.text
    without_key = await durable.post("/api/users", json=body, params=WAIT)
    assert without_key.status_code == 409, without_key.text


async def test_two_waits_for_one_email_cannot_both_succeed(durable: httpx.AsyncClient) -> None:
    body = new_user()
    answers = await asyncio.gather(
        durable.post("/api/users", json=body, params=WAIT),
        durable.post("/api/users", json={**body, "name": "Someone Else"}, params=WAIT),
    )
    assert sorted(a.status_code for a in answers) == [201, 409], [a.text for a in answers]


async def test_wait_registers_an_offboarded_email_again(
    durable: httpx.AsyncClient, client: Client, saga_settings: Settings
) -> None:
    body = new_user()
    first = (await durable.post("/api/users", json=body, params=WAIT)).json()
    deleted = await durable.delete(f"/api/users/{first['id']}")
    await client.get_workflow_handle(deleted.json()["workflowId"]).result()

    again = await durable.post("/api/users", json=body, params=WAIT)
    assert again.status_code == 201, again.text
    assert again.json()["id"] != first["id"]
    assert len(await runs_of(client, onboarding_workflow_id(body["email"]), 2)) == 2


async def test_a_saga_still_running_at_the_bound_is_answered_202_and_goes_on(
    client: Client, saga_settings: Settings
) -> None:
    body = new_user()
    headers = {"Idempotency-Key": f"key-{uuid.uuid4()}"}
    waiting = saga_settings.model_copy(update={"onboarding_wait_seconds": 1.0})
    # SQLite's write takes longer than the bound (and less than a step's timeout).
    async with (
        saga_worker(client, saga_settings, sqlite={"create_delay": 3.0}),
        gateway(client, waiting) as impatient,
        gateway(client, saga_settings) as patient,
    ):
        response = await impatient.post("/api/users", json=body, headers=headers, params=WAIT)
        assert response.status_code == 202, response.text
        workflow_id = response.json()["workflowId"]
        assert workflow_id == onboarding_workflow_id(body["email"])
        # A retry joins the run and waits for its outcome: the user it created.
        retried = await patient.post("/api/users", json=body, headers=headers, params=WAIT)
        assert retried.status_code == 201, retried.text
    result = await client.get_workflow_handle(workflow_id, result_type=SagaResult).result()
    assert retried.json()["id"] == result.user_id
    assert len(await runs_of(client, workflow_id, 1)) == 1


async def test_without_a_worker_the_wait_ends_at_the_bound_with_202(
    client: Client, saga_settings: Settings
) -> None:
    # No worker accepts the update, so Temporal never answers the start: the gateway finds
    # the run it started by its memo.
    body = new_user()
    waiting = saga_settings.model_copy(update={"onboarding_wait_seconds": 1.0})
    async with gateway(client, waiting) as http:
        response = await http.post("/api/users", json=body, params=WAIT)
    assert response.status_code == 202, response.text
    handle = client.get_workflow_handle(response.json()["workflowId"], result_type=SagaResult)
    assert (await handle.describe()).status is WorkflowExecutionStatus.RUNNING
    async with saga_worker(client, saga_settings):
        result = await handle.result()
    assert result.status == "completed"


async def test_in_process_wait_is_the_synchronous_saga(in_process: httpx.AsyncClient) -> None:
    response = await in_process.post("/api/users", json=new_user(), params=WAIT)
    assert response.status_code == 201, response.text
    assert response.json()["stored_in"] == dict.fromkeys(PROVIDERS, True)
