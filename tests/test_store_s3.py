"""The S3 store against a real S3 HTTP server (moto_server)."""

from __future__ import annotations

import hashlib
import os
import traceback
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiobotocore.config import AioConfig
from pydantic import SecretStr

from nexpo_workflows.config import Settings
from nexpo_workflows.ports import free_port
from nexpo_workflows.storage import (
    ChecksumMismatchError,
    ObjectStore,
    StoreUnavailableError,
    enabled_stores,
)
from nexpo_workflows.storage.base import SHA256_METADATA
from nexpo_workflows.storage.s3 import PART_SIZE, S3Store
from tests.servers.s3 import running_s3
from tests.store_contract import MIB, StoreContract, chunks_of, read_all

SECRET = "testing-secret-key"
# One attempt and a 1 s connect timeout: a call to a closed port fails at once.
QUICK_FAILURE = AioConfig(
    connect_timeout=1, read_timeout=5, retries={"max_attempts": 1, "mode": "standard"}
)


@pytest.fixture(scope="module")
async def s3_endpoint() -> AsyncIterator[str]:
    async with running_s3() as endpoint:
        yield endpoint


def make_store(endpoint: str, bucket: str | None = None) -> S3Store:
    return S3Store(
        bucket or f"nexpo-test-{uuid.uuid4().hex[:12]}",
        endpoint_url=endpoint,
        access_key_id=SecretStr("testing"),
        secret_access_key=SecretStr(SECRET),
        config=QUICK_FAILURE,
    )


class CorruptingClient:
    """Flips one byte of the body on its way to the server, after the store computed the
    digests of what it meant to send: what a fault on the wire or in a proxy would do."""

    def __init__(self, client: Any, operation: str) -> None:
        self._client = client
        self._operation = operation

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    async def _corrupted(self, operation: str, **kwargs: Any) -> Any:
        if operation == self._operation:
            body = bytearray(kwargs["Body"])
            body[len(body) // 2] ^= 0xFF
            # The real S3 would refuse a body that does not match its Content-MD5; moto does
            # not, so this exercises the store's own comparison of the ETag with the MD5.
            kwargs["Body"] = bytes(body)
        return await getattr(self._client, operation)(**kwargs)

    async def put_object(self, **kwargs: Any) -> Any:
        return await self._corrupted("put_object", **kwargs)

    async def upload_part(self, **kwargs: Any) -> Any:
        return await self._corrupted("upload_part", **kwargs)


class TestS3Store(StoreContract):
    @pytest.fixture
    async def store(self, s3_endpoint: str) -> AsyncIterator[ObjectStore]:
        store = make_store(s3_endpoint)
        await store.connect()
        yield store
        await store.close()

    @pytest.fixture
    def unreachable_store(self) -> ObjectStore:
        return make_store(f"http://127.0.0.1:{free_port()}")

    async def test_a_large_object_goes_up_in_parts(self, store: S3Store) -> None:
        data = os.urandom(12 * MIB)
        info = await store.put("large.bin", chunks_of(data, MIB), content_type="a/b")
        assert (info.size, info.sha256) == (len(data), hashlib.sha256(data).hexdigest())
        # The copy that records the SHA-256 makes S3 compute it over the stored bytes.
        assert info.native_checksums["etag"] == hashlib.md5(data).hexdigest()
        assert "sha256" in info.native_checksums
        head = await store.head("large.bin")
        assert head is not None
        assert (head.size, head.sha256, head.content_type) == (len(data), info.sha256, "a/b")
        assert await read_all(store, "large.bin") == data

    @pytest.mark.parametrize(
        ("operation", "size"),
        [("put_object", 100 * 1024), ("upload_part", PART_SIZE + MIB)],
    )
    async def test_a_corrupted_upload_is_a_mismatch_and_leaves_nothing(
        self, store: S3Store, operation: str, size: int
    ) -> None:
        client = store._client
        store._client = CorruptingClient(client, operation)
        with pytest.raises(ChecksumMismatchError, match="is not the MD5 sent"):
            await store.put("corrupt", chunks_of(os.urandom(size), MIB))
        store._client = client
        assert await store.head("corrupt") is None
        uploads = await client.list_multipart_uploads(Bucket=store.bucket)
        assert uploads.get("Uploads", []) == []

    async def test_the_sha256_is_in_the_object_metadata(self, store: S3Store) -> None:
        data = b"metadata"
        await store.put("m", chunks_of(data))
        response = await store._client.head_object(Bucket=store.bucket, Key="m")
        assert response["Metadata"] == {SHA256_METADATA: hashlib.sha256(data).hexdigest()}

    async def test_list_carries_the_sha256(self, store: S3Store) -> None:
        await store.put("x/1", chunks_of(b"one"))
        [info] = [info async for info in store.list("x/")]
        assert info.sha256 == hashlib.sha256(b"one").hexdigest()


async def test_a_stopped_server_is_unavailable_and_a_restarted_one_serves_again() -> None:
    port = free_port()
    async with running_s3(port=port) as endpoint:
        store = make_store(endpoint)
        await store.connect()
    try:
        with pytest.raises(StoreUnavailableError, match=r"^s3: ") as stopped:
            await store.ping()
        assert SECRET not in "".join(traceback.format_exception(stopped.value))
        with pytest.raises(StoreUnavailableError):
            await store.put("k", chunks_of(b"x"))
        async with running_s3(port=port):
            # moto keeps nothing across a restart: the bucket is created again.
            await store.connect()
            await store.ping()
            await store.put("k", chunks_of(b"back"))
            assert await read_all(store, "k") == b"back"
    finally:
        await store.close()


def test_the_store_is_built_from_the_settings() -> None:
    settings = Settings(
        _env_file=None,
        enable_s3=True,
        s3_bucket="objects",
        s3_region="eu-west-1",
        s3_endpoint_url="http://127.0.0.1:9000",
    )
    store = enabled_stores(settings)["s3"]
    assert isinstance(store, S3Store)
    assert (store.bucket, store.region, store.endpoint_url) == (
        "objects",
        "eu-west-1",
        "http://127.0.0.1:9000",
    )
