"""A user's identity at the gateway's edges: an Idempotency-Key is bound to its request, a
compensation deletes only what its own saga wrote, and an offboarded email can register again.
Real Temporal, real databases; an outage is a FaultyProvider around a real one."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from temporalio.client import Client

from nexpo_workflows.api.app import create_app
from nexpo_workflows.api.deps import GatewayState
from nexpo_workflows.config import Settings
from nexpo_workflows.providers import DatabaseProvider, enabled_providers
from nexpo_workflows.services import Services
from nexpo_workflows.users.models import SagaResult, SagaStatus
from tests.conftest import ALL_PROVIDERS, API_KEY, saga_worker, stored
from tests.faults import FaultyProvider
from tests.test_users_api import new_user

AUTH = {"X-API-Key": API_KEY}


@asynccontextmanager
async def in_process_gateway(
    settings: Settings, **faults: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, dict[str, DatabaseProvider]]]:
    """The gateway with ENABLE_TEMPORAL=false over real providers, some behind a
    FaultyProvider (configured per provider name, changeable by the test)."""
    settings = settings.model_copy(update={"enable_temporal": False})
    providers = enabled_providers(settings)
    for name, fault in faults.items():
        providers[name] = FaultyProvider(providers[name], **fault)
    services = Services(settings=settings, client=None, providers=providers)
    app = create_app(GatewayState(services, None, metrics_url=None))
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://gw", headers=AUTH
        ) as http:
            yield http, providers
    finally:
        await services.close()


def faulty(providers: dict[str, DatabaseProvider], name: str) -> FaultyProvider:
    provider = providers[name]
    assert isinstance(provider, FaultyProvider)
    return provider


def a_key() -> dict[str, str]:
    return {"Idempotency-Key": f"key-{uuid.uuid4()}"}


async def everywhere(settings: Settings, user_id: str) -> bool:
    return all(record is not None for record in (await stored(settings, user_id)).values())


async def test_in_process_a_retried_key_replays_its_user_while_a_database_is_down(
    saga_settings: Settings,
) -> None:
    settings = saga_settings.model_copy(update={"onboarding_timeout_seconds": 2})
    body, key = new_user(), a_key()
    async with in_process_gateway(settings, sqlite={}) as (http, providers):
        first = await http.post("/api/users", json=body, headers=key)
        assert first.status_code == 201, first.text
        user_id = first.json()["id"]
        faulty(providers, "sqlite").create_fails = "before"  # SQLite is down for writes
        retried = await http.post("/api/users", json=body, headers=key)
    # The stored outcome, not a second saga whose compensation would delete the first user.
    assert retried.status_code == 201, retried.text
    assert retried.json()["id"] == user_id
    assert await everywhere(settings, user_id)


async def test_in_process_a_key_used_with_another_request_is_refused(
    saga_settings: Settings,
) -> None:
    body, key = new_user(), a_key()
    other = new_user()
    async with in_process_gateway(saga_settings) as (http, _):
        first = await http.post("/api/users", json=body, headers=key)
        assert first.status_code == 201, first.text
        changes: list[dict[str, Any]] = [
            other,
            {**body, "name": "Someone Else"},
            {**body, "profile": {"plan": "pro"}},
            {**body, "password": other["password"]},
        ]
        for changed in changes:
            refused = await http.post("/api/users", json=changed, headers=key)
            assert refused.status_code == 422, refused.text
            assert "Idempotency-Key" in refused.json()["detail"]
            assert changed["password"] not in refused.text
        # Nothing was created for the other request: its email is free.
        created = await http.post("/api/users", json=other)
        assert created.status_code == 201, created.text
    assert await everywhere(saga_settings, first.json()["id"])


async def test_in_process_a_failed_saga_frees_its_key_for_a_new_saga(
    saga_settings: Settings,
) -> None:
    settings = saga_settings.model_copy(update={"onboarding_timeout_seconds": 1})
    body, key = new_user(), a_key()
    async with in_process_gateway(settings, sqlite={"create_fails": "before"}) as (
        http,
        providers,
    ):
        failed = await http.post("/api/users", json=body, headers=key)
        assert failed.status_code == 503, failed.text
        failed_id = failed.json()["detail"]["result"]["user_id"]
        faulty(providers, "sqlite").create_fails = None
        retried = await http.post("/api/users", json=body, headers=key)
    assert retried.status_code == 201, retried.text
    # A new saga writes a new id: nothing of the failed one can be mistaken for it.
    assert retried.json()["id"] != failed_id
    assert await everywhere(settings, retried.json()["id"])
    assert await stored(settings, failed_id) == dict.fromkeys(ALL_PROVIDERS)


async def test_in_process_the_key_of_a_deleted_user_does_not_bring_it_back(
    saga_settings: Settings,
) -> None:
    body, key = new_user(), a_key()
    async with in_process_gateway(saga_settings) as (http, _):
        created = await http.post("/api/users", json=body, headers=key)
        assert created.status_code == 201, created.text
        user_id = created.json()["id"]
        assert (await http.delete(f"/api/users/{user_id}")).status_code == 200
        again = await http.post("/api/users", json=body, headers=key)
        assert again.status_code == 409, again.text
        assert "deleted" in again.json()["detail"]
        # A new key registers the email again, as a new user.
        new = await http.post("/api/users", json=body, headers=a_key())
        assert new.status_code == 201, new.text
    assert new.json()["id"] != user_id
    assert await everywhere(saga_settings, new.json()["id"])
    assert await stored(saga_settings, user_id) == dict.fromkeys(ALL_PROVIDERS)


async def test_in_process_concurrent_requests_with_one_key_create_one_user(
    saga_settings: Settings,
) -> None:
    body, key = new_user(), a_key()
    async with in_process_gateway(saga_settings, sqlite={"create_delay": 1.0}) as (http, _):
        answers = await asyncio.gather(
            *(http.post("/api/users", json=body, headers=key) for _ in range(2))
        )
        codes = sorted(answer.status_code for answer in answers)
        assert codes == [201, 409], [answer.text for answer in answers]
        user_id = next(a for a in answers if a.status_code == 201).json()["id"]
        # Once done, the key replays its user.
        replayed = await http.post("/api/users", json=body, headers=key)
    assert replayed.status_code == 201, replayed.text
    assert replayed.json()["id"] == user_id
    assert await everywhere(saga_settings, user_id)


@asynccontextmanager
async def durable_gateway(client: Client, settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The gateway with ENABLE_TEMPORAL=true and a worker on its task queue."""
    services = Services.from_settings(settings, client)
    app = create_app(GatewayState(services, client, metrics_url=None))
    try:
        async with (
            saga_worker(client, settings),
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://gw", headers=AUTH
            ) as http,
        ):
            yield http
    finally:
        await services.close()


async def onboarded(
    http: httpx.AsyncClient, client: Client, body: dict[str, str], **headers: str
) -> SagaResult:
    accepted = await http.post("/api/users", json=body, headers=headers)
    assert accepted.status_code == 202, accepted.text
    workflow_id = accepted.json()["workflowId"]
    result: SagaResult = await client.get_workflow_handle(
        workflow_id, result_type=SagaResult
    ).result()
    return result


async def offboarded(http: httpx.AsyncClient, client: Client, user_id: str) -> None:
    accepted = await http.delete(f"/api/users/{user_id}")
    assert accepted.status_code == 202, accepted.text
    await client.get_workflow_handle(accepted.json()["workflowId"]).result()


async def test_an_offboarded_email_registers_again(client: Client, saga_settings: Settings) -> None:
    body = new_user()
    async with durable_gateway(client, saga_settings) as http:
        first = await onboarded(http, client, body)
        await offboarded(http, client, first.user_id)
        second = await onboarded(http, client, body)
        # While the new user exists, the email is taken again.
        taken = await http.post("/api/users", json=body)
        assert taken.status_code == 409, taken.text
    assert second.status is SagaStatus.COMPLETED
    assert second.user_id != first.user_id
    assert await everywhere(saga_settings, second.user_id)
    assert await stored(saga_settings, first.user_id) == dict.fromkeys(ALL_PROVIDERS)


async def test_the_key_of_an_offboarded_user_starts_a_new_onboarding(
    client: Client, saga_settings: Settings
) -> None:
    body, key = new_user(), a_key()
    async with durable_gateway(client, saga_settings) as http:
        first = await onboarded(http, client, body, **key)
        await offboarded(http, client, first.user_id)
        # Not the old run, whose user no longer exists: a new one, which creates the user.
        second = await onboarded(http, client, body, **key)
        # The key now names the new run; replayed, it joins it.
        replayed = await http.post("/api/users", json=body, headers=key)
        assert replayed.status_code == 202, replayed.text
    assert second.user_id != first.user_id
    assert await everywhere(saga_settings, second.user_id)


async def test_concurrent_onboardings_of_an_offboarded_email_one_wins(
    client: Client, saga_settings: Settings
) -> None:
    body = new_user()
    async with durable_gateway(client, saga_settings) as http:
        first = await onboarded(http, client, body)
        await offboarded(http, client, first.user_id)
        answers = await asyncio.gather(*(http.post("/api/users", json=body) for _ in range(2)))
        codes = sorted(answer.status_code for answer in answers)
        assert codes == [202, 409], [answer.text for answer in answers]
        workflow_id = next(a for a in answers if a.status_code == 202).json()["workflowId"]
        result = await client.get_workflow_handle(workflow_id, result_type=SagaResult).result()
    assert result.status is SagaStatus.COMPLETED
    assert await everywhere(saga_settings, result.user_id)


async def test_a_key_used_with_another_request_is_refused_in_temporal_mode(
    client: Client, saga_settings: Settings
) -> None:
    body, key = new_user(), a_key()
    async with durable_gateway(client, saga_settings) as http:
        first = await onboarded(http, client, body, **key)
        refused = await http.post("/api/users", json={**body, "name": "Other"}, headers=key)
        assert refused.status_code == 422, refused.text
        assert "Idempotency-Key" in refused.json()["detail"]
    assert (await stored(saga_settings, first.user_id))["postgres"] is not None
