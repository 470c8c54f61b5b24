"""A stateful property test of /api/users (ENABLE_TEMPORAL=false) over the real databases.

Hypothesis draws sequences of creates (with and without an Idempotency-Key), retries of a key
with the same or another request, reads and deletes over a few emails, while MongoDB or
SQLite refuses every write for a while (a FaultyProvider). After every step: each user the
gateway ever named is in every database or in none, the users the model holds alive are
everywhere, an email has at most one user, and every answer is a documented status.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from nexpo_workflows.api.app import create_app
from nexpo_workflows.api.deps import GatewayState
from nexpo_workflows.config import Settings
from nexpo_workflows.providers import DatabaseProvider, enabled_providers
from nexpo_workflows.services import Services
from tests.conftest import API_KEY, SUBMITTED_PASSWORDS
from tests.faults import FaultyProvider

# The databases that go down; PostgreSQL holds the idempotency keys and stays up.
FLAKY = ["mongodb", "sqlite"]
EMAILS = 3
PASSWORDS = ["first-password-1", "other-password-2"]
SUBMITTED_PASSWORDS.update(PASSWORDS)
DOCUMENTED = {"POST": {201, 409, 422, 503}, "GET": {200, 404}, "DELETE": {200, 503}}


class UsersGateway(RuleBasedStateMachine):
    gateway_settings: Settings

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        providers = enabled_providers(self.gateway_settings)
        for name in FLAKY:
            providers[name] = FaultyProvider(providers[name])
        self.providers: dict[str, DatabaseProvider] = providers
        self.services = Services(settings=self.gateway_settings, client=None, providers=providers)
        app = create_app(GatewayState(self.services, None, metrics_url=None))
        self.http = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://gw",
            headers={"X-API-Key": API_KEY},
        )
        run = uuid.uuid4().hex[:10]
        self.emails = [f"state.{run}.{n}@example.com" for n in range(EMAILS)]
        self.named: set[str] = set()  # every user id an answer named
        self.alive: dict[str, str] = {}  # user id -> email, of the users that must exist
        # key -> (the request it was first sent with, the user it created or None)
        self.keys: dict[str, tuple[dict[str, Any], str | None]] = {}
        self.down: set[str] = set()

    def teardown(self) -> None:
        self.loop.run_until_complete(self.http.aclose())
        self.loop.run_until_complete(self.services.close())
        self.loop.close()

    def _call(self, method: str, url: str, **options: Any) -> httpx.Response:
        response = self.loop.run_until_complete(self.http.request(method, url, **options))
        assert response.status_code in DOCUMENTED[method], (method, url, response.text)
        return response

    def _post(self, body: dict[str, Any], key: str | None) -> httpx.Response:
        headers = {"Idempotency-Key": key} if key else {}
        response = self._call("POST", "/api/users", json=body, headers=headers)
        if response.status_code == 201:
            user = response.json()
            self.named.add(user["id"])
            self.alive[user["id"]] = user["email"]
        elif response.status_code in (409, 503) and isinstance(response.json()["detail"], dict):
            result = response.json()["detail"].get("result")
            if result is not None:
                self.named.add(result["user_id"])
        return response

    def _body(self, email: int, name: str, password: int) -> dict[str, Any]:
        return {"email": self.emails[email], "name": name, "password": PASSWORDS[password]}

    @initialize(email=st.integers(0, EMAILS - 1))
    def create_with_a_key(self, email: int) -> None:
        """Every run has a key to retry."""
        self.create(email, "Ada", keyed=True)

    @rule(
        email=st.integers(0, EMAILS - 1),
        name=st.sampled_from(["Ada", "Grace"]),
        keyed=st.booleans(),
    )
    def create(self, email: int, name: str, keyed: bool) -> None:
        body = self._body(email, name, 0)
        key = f"key-{uuid.uuid4()}" if keyed else None
        taken = self.emails[email] in self.alive.values()
        response = self._post(body, key)
        if taken:
            assert response.status_code == 409, response.text
        else:
            assert response.status_code == (503 if self.down else 201), response.text
        if key is not None and response.status_code == 201:
            self.keys[key] = (body, response.json()["id"])

    @precondition(lambda self: bool(self.keys))
    @rule(data=st.data(), change=st.sampled_from([None, "email", "name", "password"]))
    def retry_with_key(self, data: st.DataObject, change: str | None) -> None:
        key = data.draw(st.sampled_from(sorted(self.keys)))
        first, user_id = self.keys[key]
        body = dict(first)
        if change == "email":
            body["email"] = self.emails[(self.emails.index(first["email"]) + 1) % EMAILS]
        elif change == "name":
            body["name"] = first["name"] + " Jr"
        elif change == "password":
            body["password"] = PASSWORDS[1]
        response = self._post(body, key)
        if change in ("email", "name"):
            assert response.status_code == 422, response.text  # the fingerprint differs
        elif user_id not in self.alive:
            assert response.status_code == 409, response.text  # its user was deleted since
        elif change == "password":
            assert response.status_code == 422, response.text
        else:
            assert response.status_code == 201, response.text
            assert response.json()["id"] == user_id  # replayed, even with a database down

    @precondition(lambda self: bool(self.named))
    @rule(data=st.data())
    def get(self, data: st.DataObject) -> None:
        user_id = data.draw(st.sampled_from(sorted(self.named)))
        response = self._call("GET", f"/api/users/{user_id}")
        assert response.status_code == (200 if user_id in self.alive else 404), response.text
        if response.status_code == 200:
            assert all(response.json()["stored_in"].values())

    @precondition(lambda self: bool(self.named))
    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        user_id = data.draw(st.sampled_from(sorted(self.named)))
        response = self._call("DELETE", f"/api/users/{user_id}")
        assert response.status_code == 200, response.text  # deletes reach every database
        self.alive.pop(user_id, None)

    @rule(name=st.sampled_from(FLAKY), down=st.booleans())
    def toggle(self, name: str, down: bool) -> None:
        provider = self.providers[name]
        assert isinstance(provider, FaultyProvider)
        provider.create_fails = "before" if down else None
        if down:
            self.down.add(name)
        else:
            self.down.discard(name)

    @invariant()
    def every_user_everywhere_or_nowhere(self) -> None:
        async def where(user_id: str) -> list[bool]:
            found = [await p.get_user(user_id) for p in self.providers.values()]
            return [record is not None for record in found]

        for user_id in self.named:
            stored = self.loop.run_until_complete(where(user_id))
            assert all(stored) or not any(stored), (user_id, stored)
            assert all(stored) == (user_id in self.alive), (user_id, stored)
        emails = list(self.alive.values())
        assert len(emails) == len(set(emails)), self.alive


async def test_users_gateway_state_machine(saga_settings: Settings) -> None:
    UsersGateway.gateway_settings = saga_settings.model_copy(
        update={"enable_temporal": False, "onboarding_timeout_seconds": 3}
    )
    # In a thread with its own event loop (the machine's steps are synchronous), while this
    # loop, which started the servers, keeps serving them.
    await asyncio.to_thread(
        run_state_machine_as_test,
        UsersGateway,
        settings=settings(
            max_examples=6,
            stateful_step_count=10,
            deadline=None,
            # No shrinking: each step is real I/O (a saga with a database down lasts its
            # deadline), so the failing sequence is reported as found.
            phases=[Phase.explicit, Phase.reuse, Phase.generate],
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
