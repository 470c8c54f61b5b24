"""The behaviour every database provider must have, run against each real server.

A provider's test module subclasses ``ProviderContract`` and supplies two fixtures:
``provider`` (connected, against a real server, empty users store) and
``unreachable_provider`` (configured for an address where nothing listens).
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import pytest

from nexpo_workflows.providers import (
    DatabaseProvider,
    DuplicateEmailError,
    ProviderUnavailableError,
    UserRecord,
)


def make_user(**overrides: object) -> UserRecord:
    unique = uuid.uuid4().hex
    values: dict[str, object] = {
        "id": str(uuid.uuid4()),
        "email": f"user-{unique}@example.com",
        "name": "Ada Lovelace",
        "password_hash": "$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA",
        # Millisecond precision: the coarsest that every provider stores.
        "created_at": datetime.now(UTC).replace(microsecond=123000),
        "profile": {"plan": "pro", "tags": ["a", "b"], "limits": {"seats": 3}},
    }
    values.update(overrides)
    return UserRecord.model_validate(values)


class ProviderContract:
    async def test_ping(self, provider: DatabaseProvider) -> None:
        await provider.ping()

    async def test_create_then_get_returns_the_same_record(
        self, provider: DatabaseProvider
    ) -> None:
        user = make_user()
        await provider.create_user(user)
        assert await provider.get_user(user.id) == user

    async def test_a_record_without_profile_round_trips(self, provider: DatabaseProvider) -> None:
        user = make_user(profile=None)
        await provider.create_user(user)
        assert await provider.get_user(user.id) == user

    async def test_creating_the_same_record_again_succeeds(
        self, provider: DatabaseProvider
    ) -> None:
        user = make_user()
        await provider.create_user(user)
        await provider.create_user(user)
        await asyncio.gather(provider.create_user(user), provider.create_user(user))
        assert await provider.get_user(user.id) == user

    async def test_another_id_with_the_same_email_is_a_duplicate(
        self, provider: DatabaseProvider
    ) -> None:
        first = make_user()
        await provider.create_user(first)
        second = make_user(email=first.email)
        with pytest.raises(DuplicateEmailError):
            await provider.create_user(second)
        assert await provider.get_user(second.id) is None
        assert await provider.get_user(first.id) == first

    async def test_delete_is_idempotent(self, provider: DatabaseProvider) -> None:
        user = make_user()
        await provider.create_user(user)
        assert await provider.delete_user(user.id) is True
        assert await provider.get_user(user.id) is None
        assert await provider.delete_user(user.id) is False

    async def test_deleting_a_user_that_never_existed_is_not_an_error(
        self, provider: DatabaseProvider
    ) -> None:
        assert await provider.delete_user(str(uuid.uuid4())) is False

    async def test_email_is_free_again_after_delete(self, provider: DatabaseProvider) -> None:
        user = make_user()
        await provider.create_user(user)
        await provider.delete_user(user.id)
        again = make_user(email=user.email)
        await provider.create_user(again)
        assert await provider.get_user(again.id) == again

    async def test_connect_and_close_are_idempotent(self, provider: DatabaseProvider) -> None:
        await provider.connect()
        await provider.connect()
        await provider.ping()

    async def test_an_unreachable_backend_is_a_retryable_error(
        self, unreachable_provider: DatabaseProvider
    ) -> None:
        with pytest.raises(ProviderUnavailableError):
            await unreachable_provider.ping()
        with pytest.raises(ProviderUnavailableError):
            await unreachable_provider.create_user(make_user())
        with pytest.raises(ProviderUnavailableError):
            await unreachable_provider.delete_user(str(uuid.uuid4()))
        await unreachable_provider.close()
