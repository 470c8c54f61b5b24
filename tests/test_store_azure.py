"""The Azure Blob store against a real emulator (Azurite)."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import AsyncIterator

import pytest
from azure.storage.blob import ContentSettings
from azure.storage.blob.aio import BlobServiceClient
from pydantic import SecretStr

from nexpo_workflows.config import ConfigError, Settings
from nexpo_workflows.ports import free_port
from nexpo_workflows.storage import (
    ChecksumMismatchError,
    ObjectStore,
    StoreUnavailableError,
    enabled_stores,
)
from nexpo_workflows.storage.azure import AzureBlobStore
from tests.servers.azurite import ACCOUNT_KEY, connection_string, running_azurite
from tests.store_contract import MIB, StoreContract, chunks_of, read_all

# No retries and a 1 s connect timeout: a call to a closed port fails at once.
QUICK_FAILURE = {"retry_total": 0, "retry_connect": 0, "connection_timeout": 1}


@pytest.fixture(scope="module")
async def azurite() -> AsyncIterator[str]:
    async with running_azurite() as connection:
        yield connection


def fresh_container() -> str:
    return f"nexpo-test-{uuid.uuid4().hex[:12]}"


class WrongMD5Store(AzureBlobStore):
    """Declares an MD5 that is not the content's, as a corrupted upload would end up."""

    def _content_settings(self, content_type: str | None, md5: bytes) -> ContentSettings:
        return super()._content_settings(content_type, hashlib.md5(b"not the content").digest())


class TestAzureBlobStore(StoreContract):
    @pytest.fixture
    async def store(self, azurite: str) -> AsyncIterator[ObjectStore]:
        store = AzureBlobStore(SecretStr(azurite), fresh_container())
        await store.connect()
        yield store
        await store.close()

    @pytest.fixture
    def unreachable_store(self) -> ObjectStore:
        return AzureBlobStore(
            SecretStr(connection_string(free_port())), fresh_container(), **QUICK_FAILURE
        )

    async def test_a_large_object_streams_through_several_blocks(
        self, store: AzureBlobStore, azurite: str
    ) -> None:
        data = os.urandom(10 * MIB)
        info = await store.put("large.bin", chunks_of(data, MIB))
        assert (info.size, info.sha256) == (len(data), hashlib.sha256(data).hexdigest())
        assert info.native_checksums == {"md5": hashlib.md5(data).hexdigest()}
        async with BlobServiceClient.from_connection_string(azurite) as client:
            blob = client.get_blob_client(store.container, "large.bin")
            committed, _ = await blob.get_block_list()
            metadata = (await blob.get_blob_properties()).metadata
        assert len(committed) == 3  # 4 + 4 + 2 MiB
        assert metadata == {"nexposha256": info.sha256}
        assert await read_all(store, "large.bin") == data

    async def test_a_stored_md5_that_differs_is_a_mismatch_and_the_blob_is_removed(
        self, azurite: str
    ) -> None:
        store = WrongMD5Store(SecretStr(azurite), fresh_container())
        try:
            with pytest.raises(ChecksumMismatchError, match="was deleted"):
                await store.put("corrupt", chunks_of(b"some content"))
            assert await store.head("corrupt") is None
        finally:
            await store.close()


async def test_a_stopped_emulator_is_unavailable_and_a_restarted_one_serves_again() -> None:
    port = free_port()
    async with running_azurite(port=port) as connection:
        store = AzureBlobStore(SecretStr(connection), fresh_container(), **QUICK_FAILURE)
        await store.connect()
    try:
        with pytest.raises(StoreUnavailableError, match=r"^azure: ") as stopped:
            await store.ping()
        assert ACCOUNT_KEY not in str(stopped.value)
        with pytest.raises(StoreUnavailableError):
            await store.put("k", chunks_of(b"x"))
        async with running_azurite(port=port):
            # The emulator keeps nothing across a restart: the container is created again.
            await store.connect()
            await store.ping()
            await store.put("k", chunks_of(b"back"))
            assert await read_all(store, "k") == b"back"
    finally:
        await store.close()


def test_the_store_is_built_from_the_settings() -> None:
    settings = Settings(
        _env_file=None,
        enable_azure_blob=True,
        azure_storage_connection_string=connection_string(10000),
        azure_blob_container="objects",
    )
    store = enabled_stores(settings)["azure"]
    assert isinstance(store, AzureBlobStore)
    assert store.container == "objects"
    with pytest.raises(ConfigError, match="AZURE_STORAGE_CONNECTION_STRING"):
        AzureBlobStore.from_settings(Settings(_env_file=None, enable_azure_blob=True))
