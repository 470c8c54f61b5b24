"""The Google Cloud Storage store, against a real fake-gcs-server."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from nexpo_workflows.config import Settings
from nexpo_workflows.ports import free_port
from nexpo_workflows.storage import (
    ChecksumMismatchError,
    ObjectStore,
    StoreUnavailableError,
    enabled_stores,
)
from nexpo_workflows.storage.base import CHUNK_SIZE
from nexpo_workflows.storage.gcs import GCSStore
from tests.servers import HOST
from tests.servers.gcs import running_gcs
from tests.store_contract import MIB, StoreContract, chunks_of, read_all


def fresh_bucket() -> str:
    return f"nexpo-test-{uuid.uuid4().hex[:12]}"


def fast_failing_store(endpoint: str) -> GCSStore:
    # A dead server then fails a call in seconds, not after the client's default minutes.
    return GCSStore(
        fresh_bucket(), endpoint_url=endpoint, timeout_seconds=2.0, retry_deadline_seconds=1.0
    )


@pytest.fixture(scope="module")
async def gcs_endpoint() -> AsyncIterator[str]:
    async with running_gcs() as endpoint:
        yield endpoint


class CorruptingGCSStore(GCSStore):
    """Alters each chunk after it was digested, as a faulty path to the service would."""

    async def _write(self, writer: Any, chunk: bytes) -> None:
        if chunk:
            chunk = bytes([chunk[0] ^ 0xFF]) + chunk[1:]
        await super()._write(writer, chunk)


class TestGCSStore(StoreContract):
    @pytest.fixture
    async def store(self, gcs_endpoint: str) -> AsyncIterator[ObjectStore]:
        store = GCSStore(fresh_bucket(), endpoint_url=gcs_endpoint)
        await store.connect()
        yield store
        await store.close()

    @pytest.fixture
    def unreachable_store(self) -> ObjectStore:
        return fast_failing_store(f"http://{HOST}:{free_port(HOST)}")

    async def test_a_large_object_streams_in_chunks(self, store: ObjectStore) -> None:
        data = os.urandom(10 * MIB)
        info = await store.put("large.bin", chunks_of(data, MIB))
        assert info.size == len(data)
        assert info.sha256 == hashlib.sha256(data).hexdigest()
        sha256 = hashlib.sha256()
        sizes = []
        async for chunk in store.get("large.bin"):
            sha256.update(chunk)
            sizes.append(len(chunk))
        assert sha256.hexdigest() == info.sha256
        assert max(sizes) <= CHUNK_SIZE
        assert sum(sizes) == len(data)

    async def test_native_checksums_are_the_services(self, store: ObjectStore) -> None:
        data = b"checksummed"
        info = await store.put("sums", chunks_of(data))
        assert info.native_checksums["md5"] == hashlib.md5(data).hexdigest()
        assert "crc32c" in info.native_checksums
        assert await store.head("sums") == info

    async def test_the_services_checksum_is_checked(self, gcs_endpoint: str) -> None:
        store = CorruptingGCSStore(fresh_bucket(), endpoint_url=gcs_endpoint)
        await store.connect()
        try:
            with pytest.raises(ChecksumMismatchError):
                await store.put("corrupt", chunks_of(os.urandom(3 * MIB), MIB))
            assert await store.head("corrupt") is None
            assert [info async for info in store.list()] == []
        finally:
            await store.close()

    async def test_a_stopped_server_is_unavailable_and_a_restarted_one_works(self) -> None:
        port = free_port(HOST)
        async with running_gcs(port=port) as endpoint:
            store = fast_failing_store(endpoint)
            await store.connect()
            await store.put("before", chunks_of(b"before"))
        try:
            with pytest.raises(StoreUnavailableError, match=r"^gcs: "):
                await store.ping()
            with pytest.raises(StoreUnavailableError):
                await store.put("during", chunks_of(b"during"))
            with pytest.raises(StoreUnavailableError):
                await read_all(store, "before")
            async with running_gcs(port=port):
                # The memory backend lost the bucket with the process.
                await store.connect()
                await store.put("after", chunks_of(b"after"))
                assert await read_all(store, "after") == b"after"
        finally:
            await store.close()


def test_the_settings_choose_the_gcs_store() -> None:
    settings = Settings(
        _env_file=None,
        enable_gcs=True,
        gcs_bucket="my-bucket",
        gcs_project="my-project",
        gcs_endpoint_url="http://127.0.0.1:4443",
    )
    store = enabled_stores(settings)["gcs"]
    assert isinstance(store, GCSStore)
    assert (store.bucket_name, store.project, store.endpoint_url) == (
        "my-bucket",
        "my-project",
        "http://127.0.0.1:4443",
    )
