"""The Cosmos DB provider against a real emulator (@vercel/cosmosdb-server)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import pytest
from azure.cosmos.aio import ContainerProxy, CosmosClient

from nexpo_workflows.config import Settings
from nexpo_workflows.ports import free_port
from nexpo_workflows.providers import (
    DatabaseProvider,
    DatasetRecord,
    DuplicateEmailError,
    InvalidRecordError,
    ProviderUnavailableError,
)
from nexpo_workflows.providers.cosmosdb import (
    HASHED_ID_PREFIX,
    CosmosProvider,
    email_key,
    email_partition,
    record_item_id,
    user_item,
)
from tests.provider_contract import ProviderContract, make_user
from tests.servers.cosmosdb import EMULATOR_KEY, running_cosmosdb

CONTAINER = "users"
# No retries and a 1 s connect timeout: a call to a closed port fails at once.
QUICK_FAILURE = {"retry_total": 0, "retry_connect": 0, "connection_timeout": 1}


@pytest.fixture(scope="module")
async def cosmosdb_endpoint() -> AsyncIterator[str]:
    async with running_cosmosdb() as endpoint:
        yield endpoint


def settings_for(endpoint: str, database: str) -> Settings:
    return Settings(
        _env_file=None,
        enable_cosmosdb=True,
        cosmosdb_endpoint=endpoint,
        cosmosdb_key=EMULATOR_KEY.get_secret_value(),
        cosmosdb_database=database,
        cosmosdb_container=CONTAINER,
        cosmosdb_verify_tls=False,
    )


def fresh_database() -> str:
    return f"nexpo_test_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def database() -> str:
    return fresh_database()


@contextlib.asynccontextmanager
async def raw_container(endpoint: str, database: str) -> AsyncIterator[ContainerProxy]:
    """The provider's container through a client of its own, to write what a crash leaves."""
    async with CosmosClient(
        endpoint, credential=EMULATOR_KEY.get_secret_value(), connection_verify=False
    ) as client:
        yield client.get_database_client(database).get_container_client(CONTAINER)


class TestCosmosProvider(ProviderContract):
    @pytest.fixture
    async def provider(
        self, cosmosdb_endpoint: str, database: str
    ) -> AsyncIterator[DatabaseProvider]:
        provider = CosmosProvider.from_settings(settings_for(cosmosdb_endpoint, database))
        await provider.connect()
        yield provider
        await provider.close()

    @pytest.fixture
    def unreachable_provider(self) -> DatabaseProvider:
        return CosmosProvider(
            f"https://127.0.0.1:{free_port()}",
            EMULATOR_KEY,
            fresh_database(),
            CONTAINER,
            verify_tls=False,
            **QUICK_FAILURE,
        )

    async def test_schema_creation_is_idempotent(self, cosmosdb_endpoint: str) -> None:
        settings = settings_for(cosmosdb_endpoint, fresh_database())
        first, second = (CosmosProvider.from_settings(settings) for _ in range(2))
        await first.connect()
        await second.connect()
        user = make_user()
        await first.create_user(user)
        assert await second.get_user(user.id) == user
        await first.close()
        await second.close()
        await first.close()

    async def test_emails_differing_in_case_are_duplicates(
        self, provider: DatabaseProvider
    ) -> None:
        first = make_user()
        await provider.create_user(first)
        with pytest.raises(DuplicateEmailError):
            await provider.create_user(make_user(email=first.email.upper()))

    async def test_concurrent_creates_with_one_email_have_one_winner(
        self, provider: DatabaseProvider
    ) -> None:
        email = make_user().email
        users = [make_user(email=email) for _ in range(5)]
        results = await asyncio.gather(
            *(provider.create_user(user) for user in users), return_exceptions=True
        )
        assert sum(result is None for result in results) == 1
        assert all(isinstance(r, DuplicateEmailError) for r in results if r is not None)
        stored = [await provider.get_user(user.id) for user in users]
        assert [user for user in stored if user is not None] == [
            user for user, result in zip(users, results, strict=True) if result is None
        ]

    async def test_a_record_is_stored_as_plain_json(
        self, provider: DatabaseProvider, cosmosdb_endpoint: str, database: str
    ) -> None:
        user = make_user()
        await provider.create_user(user)
        async with raw_container(cosmosdb_endpoint, database) as container:
            item = await container.read_item(user.id, partition_key=f"user:{user.id}")
        assert item["created_at"] == user.created_at.isoformat()
        assert item["profile"] == user.profile
        assert item["email"] == user.email

    async def test_delete_removes_the_email_claim_too(
        self, provider: DatabaseProvider, cosmosdb_endpoint: str, database: str
    ) -> None:
        user = make_user()
        await provider.create_user(user)
        partition = email_partition(email_key(user.email))
        async with raw_container(cosmosdb_endpoint, database) as container:
            claims = container.query_items(
                "SELECT * FROM c WHERE c.pk = @pk",
                parameters=[{"name": "@pk", "value": partition}],
                partition_key=partition,
            )
            assert [claim["user_id"] async for claim in claims] == [user.id]
            await provider.delete_user(user.id)
            claims = container.query_items(
                "SELECT * FROM c WHERE c.pk = @pk",
                parameters=[{"name": "@pk", "value": partition}],
                partition_key=partition,
            )
            assert [claim async for claim in claims] == []

    async def test_a_user_left_without_its_email_claim_is_completed_by_a_retry(
        self, provider: DatabaseProvider, cosmosdb_endpoint: str, database: str
    ) -> None:
        user = make_user()
        async with raw_container(cosmosdb_endpoint, database) as container:
            await container.create_item(user_item(user))  # a create that crashed here
        await provider.create_user(user)
        assert await provider.get_user(user.id) == user
        with pytest.raises(DuplicateEmailError):
            await provider.create_user(make_user(email=user.email))

    async def test_a_user_left_without_its_email_claim_is_removed_by_a_delete(
        self, provider: DatabaseProvider, cosmosdb_endpoint: str, database: str
    ) -> None:
        user = make_user()
        async with raw_container(cosmosdb_endpoint, database) as container:
            await container.create_item(user_item(user))
        assert await provider.delete_user(user.id) is True
        assert await provider.get_user(user.id) is None
        again = make_user(email=user.email)
        await provider.create_user(again)
        assert await provider.get_user(again.id) == again

    async def test_a_stale_email_claim_is_released_by_the_next_claimant(
        self, provider: DatabaseProvider, cosmosdb_endpoint: str, database: str
    ) -> None:
        user = make_user()
        key = email_key(user.email)
        async with raw_container(cosmosdb_endpoint, database) as container:
            # What a delete leaves when it runs between a create's two writes.
            await container.create_item(
                {"id": key, "pk": email_partition(key), "user_id": str(uuid.uuid4())}
            )
        await provider.create_user(user)
        assert await provider.get_user(user.id) == user
        with pytest.raises(DuplicateEmailError):
            await provider.create_user(make_user(email=user.email))

    async def test_deleting_a_user_keeps_another_users_claim_on_its_email(
        self, provider: DatabaseProvider, cosmosdb_endpoint: str, database: str
    ) -> None:
        owner = make_user()
        await provider.create_user(owner)
        orphan = make_user(email=owner.email)
        async with raw_container(cosmosdb_endpoint, database) as container:
            await container.create_item(user_item(orphan))
        assert await provider.delete_user(orphan.id) is True
        with pytest.raises(DuplicateEmailError):
            await provider.create_user(make_user(email=owner.email))
        assert await provider.get_user(owner.id) == owner

    async def test_an_id_cosmos_cannot_store_is_refused_before_writing(
        self, provider: DatabaseProvider
    ) -> None:
        with pytest.raises(InvalidRecordError, match="cannot contain"):
            await provider.create_user(make_user(id="a/b"))
        assert await provider.get_user("a/b") is None
        assert await provider.delete_user("a/b") is False

    async def test_a_record_id_equal_to_another_records_item_id_is_kept_apart(
        self, provider: DatabaseProvider
    ) -> None:
        lookalike = record_item_id("a/b")
        assert lookalike.startswith(HASHED_ID_PREFIX)
        written = [DatasetRecord(id="a/b", version=1), DatasetRecord(id=lookalike, version=2)]
        await provider.upsert_records("ds", written)
        assert (
            sorted(await provider.get_records("ds", ["a/b", lookalike]), key=lambda r: r.version)
            == written
        )


async def test_a_stopped_emulator_is_unavailable_and_a_restarted_one_serves_again() -> None:
    port = free_port()
    database = fresh_database()
    async with running_cosmosdb(port=port) as endpoint:
        provider = CosmosProvider.from_settings(settings_for(endpoint, database))
        await provider.connect()
    try:
        with pytest.raises(ProviderUnavailableError, match=r"^cosmosdb: "):
            await provider.ping()
        with pytest.raises(ProviderUnavailableError):
            await provider.create_user(make_user())
        async with running_cosmosdb(port=port):
            # The emulator keeps nothing across a restart; an account would still have the
            # schema, so it is recreated by another client, not by the provider under test.
            restored = CosmosProvider.from_settings(settings_for(endpoint, database))
            await restored.connect()
            await restored.close()
            await provider.ping()
            user = make_user()
            await provider.create_user(user)
            assert await provider.get_user(user.id) == user
    finally:
        await provider.close()
