"""Password hashing at the gateway: its parameters, its bounded queue, rehashing; against real
Temporal and real databases."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from argon2 import PasswordHasher
from pydantic import SecretStr
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from nexpo_workflows.api.app import create_app
from nexpo_workflows.api.deps import GatewayState
from nexpo_workflows.config import Settings
from nexpo_workflows.edge_errors import RETRY_AFTER_SECONDS
from nexpo_workflows.services import Services
from nexpo_workflows.users.models import SagaResult
from nexpo_workflows.users.passwords import PasswordHashing
from nexpo_workflows.users.service import onboarding_workflow_id
from tests.conftest import ALL_PROVIDERS, API_KEY, saga_worker, stored
from tests.history_scan import history_payloads
from tests.test_users_api import new_user

AUTH = {"X-API-Key": API_KEY}


@asynccontextmanager
async def gateway(
    settings: Settings, client: Client | None
) -> AsyncIterator[tuple[httpx.AsyncClient, Services]]:
    """The gateway (ENABLE_TEMPORAL as ``client`` says) and the services it shares."""
    services = Services.from_settings(settings, client)
    app = create_app(GatewayState(services, client, metrics_url=None))
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://gw", headers=AUTH
        ) as http:
            yield http, services
    finally:
        await services.close()


async def test_the_configured_parameters_are_in_every_stored_hash(
    client: Client, saga_settings: Settings
) -> None:
    settings = saga_settings.model_copy(
        update={
            "password_hash_memory_kib": 12 * 1024,
            "password_hash_time_cost": 3,
            "password_hash_parallelism": 2,
        }
    )
    body = new_user()
    async with saga_worker(client, settings), gateway(settings, client) as (http, _):
        response = await http.post("/api/users", json=body)
        assert response.status_code == 202, response.text
        handle = client.get_workflow_handle(response.json()["workflowId"], result_type=SagaResult)
        result = await handle.result()
    assert "$argon2id$v=19$m=12288,t=3,p=2$" in await history_payloads(client, handle.id)
    records = await stored(settings, result.user_id)
    for record in records.values():
        assert record is not None
        assert record.password_hash.startswith("$argon2id$v=19$m=12288,t=3,p=2$")
        assert PasswordHasher().verify(record.password_hash, body["password"])


def test_the_default_parameters_are_owasps() -> None:
    hashing = PasswordHashing.from_settings(Settings(_env_file=None))
    try:
        assert hashing.hasher.hash("a password").startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    finally:
        hashing.close()


class HeldHasher(PasswordHasher):
    """Real Argon2id whose hashes wait until the test lets them go: a hasher kept busy."""

    def __init__(self) -> None:
        super().__init__(memory_cost=19 * 1024, time_cost=2, parallelism=1)
        self.started = threading.Semaphore(0)
        self.release = threading.Event()

    def hash(self, password: str | bytes, *, salt: bytes | None = None) -> str:
        self.started.release()
        self.release.wait()
        return super().hash(password, salt=salt)


async def test_a_full_queue_is_503_with_retry_after_at_once_and_starts_nothing(
    client: Client, saga_settings: Settings
) -> None:
    hasher = HeldHasher()
    async with (
        saga_worker(client, saga_settings),
        gateway(saga_settings, client) as (http, services),
    ):
        services.passwords.close()
        services.passwords = PasswordHashing(hasher, workers=1, queue_limit=1)
        # One hash on the only thread, held there, and one waiting for it: the queue is full.
        held = [
            asyncio.create_task(services.passwords.hash(SecretStr(f"held-{n}"))) for n in (1, 2)
        ]
        async with asyncio.timeout(30):
            await asyncio.to_thread(hasher.started.acquire)
        assert services.passwords.pending == 2

        body = new_user()
        # Answered while both hashes are still held: it waited for neither.
        response = await http.post("/api/users", json=body)
        assert response.status_code == 503
        assert response.headers["Retry-After"] == str(RETRY_AFTER_SECONDS)
        assert response.json()["dependency"] == "password hashing"
        assert body["password"] not in response.text
        assert not any(task.done() for task in held)
        with pytest.raises(RPCError) as missing:
            await client.get_workflow_handle(onboarding_workflow_id(body["email"])).describe()
        assert missing.value.status == RPCStatusCode.NOT_FOUND

        # Once the queue drains, the same request is accepted.
        hasher.release.set()
        await asyncio.gather(*held)
        assert services.passwords.pending == 0
        retried = await http.post("/api/users", json=body)
        assert retried.status_code == 202, retried.text
        await client.get_workflow_handle(retried.json()["workflowId"]).result()


async def test_a_replay_with_new_parameters_stores_the_rehashed_password(
    saga_settings: Settings,
) -> None:
    old = saga_settings.model_copy(update={"enable_temporal": False})
    new = old.model_copy(
        update={"password_hash_memory_kib": 12 * 1024, "password_hash_time_cost": 3}
    )
    body = new_user()
    key = {"Idempotency-Key": f"key-{uuid.uuid4()}"}
    async with gateway(old, None) as (http, _):
        created = await http.post("/api/users", json=body, headers=key)
        assert created.status_code == 201, created.text
    user_id = created.json()["id"]
    before = await stored(old, user_id)
    assert all(r is not None and "$m=19456,t=2,p=1$" in r.password_hash for r in before.values())

    async with gateway(new, None) as (http, _):
        # Another password is refused and changes nothing.
        wrong = await http.post(
            "/api/users", json={**body, "password": "another-password"}, headers=key
        )
        assert wrong.status_code == 422
        assert await stored(new, user_id) == before

        replayed = await http.post("/api/users", json=body, headers=key)
        assert replayed.status_code == 201, replayed.text
        assert replayed.json()["id"] == user_id
        after = await stored(new, user_id)
        hashes = {name: r.password_hash for name, r in after.items() if r is not None}
        assert hashes.keys() == set(ALL_PROVIDERS)
        for password_hash in hashes.values():
            assert password_hash.startswith("$argon2id$v=19$m=12288,t=3,p=1$")
            assert PasswordHasher().verify(password_hash, body["password"])
        # The hash now has the current parameters: another replay leaves it as it is.
        again = await http.post("/api/users", json=body, headers=key)
        assert again.status_code == 201
        assert await stored(new, user_id) == after
