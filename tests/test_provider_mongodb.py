"""The MongoDB provider against a real wire-protocol server (SecantusDB)."""

from __future__ import annotations

import traceback
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from nexpo_workflows.config import Settings
from nexpo_workflows.ports import free_port
from nexpo_workflows.providers import (
    DatabaseProvider,
    DuplicateEmailError,
    InvalidRecordError,
    ProviderUnavailableError,
)
from nexpo_workflows.providers.mongodb import MongoProvider
from tests.provider_contract import ProviderContract, make_user
from tests.servers.mongodb import running_mongodb

# Short enough that a test of a down server takes about a second per call.
QUICK_TIMEOUT_MS = 1000


@pytest.fixture(scope="module")
async def mongodb_url() -> AsyncIterator[str]:
    async with running_mongodb() as url:
        yield url


def fresh_database() -> str:
    return f"nexpo_test_{uuid.uuid4().hex[:12]}"


class TestMongoProvider(ProviderContract):
    @pytest.fixture
    async def provider(self, mongodb_url: str) -> AsyncIterator[DatabaseProvider]:
        settings = Settings(
            _env_file=None,
            enable_mongodb=True,
            mongodb_url=mongodb_url,
            mongodb_database=fresh_database(),
        )
        provider = MongoProvider.from_settings(settings)
        await provider.connect()
        yield provider
        await provider.close()

    @pytest.fixture
    def unreachable_provider(self) -> DatabaseProvider:
        return MongoProvider(
            f"mongodb://127.0.0.1:{free_port()}/?directConnection=true",
            fresh_database(),
            server_selection_timeout_ms=QUICK_TIMEOUT_MS,
        )

    async def test_a_document_mongodb_cannot_store_is_an_invalid_record(
        self, provider: DatabaseProvider
    ) -> None:
        # BSON field names are NUL-terminated: the driver refuses the document; final.
        user = make_user(profile={"key\x00": 1})
        with pytest.raises(InvalidRecordError, match="NULL byte"):
            await provider.create_user(user)
        assert await provider.get_user(user.id) is None

    async def test_index_creation_is_idempotent(self, mongodb_url: str) -> None:
        database = fresh_database()
        first, second = (MongoProvider(mongodb_url, database) for _ in range(2))
        await first.connect()
        await second.connect()
        user = make_user()
        await first.create_user(user)
        assert await second.get_user(user.id) == user
        await first.close()
        await second.close()

    async def test_close_is_idempotent_and_a_closed_provider_reconnects(
        self, mongodb_url: str
    ) -> None:
        provider = MongoProvider(mongodb_url, fresh_database())
        user = make_user()
        await provider.create_user(user)
        await provider.close()
        await provider.close()
        assert await provider.get_user(user.id) == user
        await provider.close()


async def test_the_password_never_reaches_the_error() -> None:
    provider = MongoProvider(
        f"mongodb://nexpo:s3cret-pw@127.0.0.1:{free_port()}/?directConnection=true",
        fresh_database(),
        server_selection_timeout_ms=QUICK_TIMEOUT_MS,
    )
    with pytest.raises(ProviderUnavailableError) as raised:
        await provider.ping()
    assert str(raised.value).startswith("mongodb: ")
    assert "s3cret-pw" not in "".join(traceback.format_exception(raised.value))
    await provider.close()


async def test_a_stopped_server_is_unavailable_until_it_is_back(tmp_path: Path) -> None:
    port = free_port()
    # On disk, so the restarted server still has the users and the unique index.
    storage = tmp_path / "mongodb"
    before = make_user()
    async with running_mongodb(port=port, storage_path=storage) as url:
        provider = MongoProvider(
            url, fresh_database(), server_selection_timeout_ms=QUICK_TIMEOUT_MS
        )
        await provider.create_user(before)
    try:
        with pytest.raises(ProviderUnavailableError):
            await provider.ping()
        with pytest.raises(ProviderUnavailableError):
            await provider.create_user(make_user())

        async with running_mongodb(port=port, storage_path=storage):
            # The same provider, without a new connect(): the client reconnects by itself.
            await provider.ping()
            assert await provider.get_user(before.id) == before
            with pytest.raises(DuplicateEmailError):
                await provider.create_user(make_user(email=before.email))
            after = make_user()
            await provider.create_user(after)
            assert await provider.get_user(after.id) == after
            # Before the stop: close() ends the server sessions, and against a stopped
            # server it would wait out server selection first.
            await provider.close()
    finally:
        await provider.close()
