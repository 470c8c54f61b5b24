"""The behaviour every object store must have, run against each real server.

A store's test module subclasses ``StoreContract`` and supplies two fixtures: ``store``
(connected, against a real server, an empty bucket) and ``unreachable_store`` (configured for
an address where nothing listens, with short timeouts).
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import AsyncIterator

import pytest

from nexpo_workflows.storage import ObjectStore, StoreUnavailableError

MIB = 1024 * 1024


async def chunks_of(data: bytes, size: int = 256 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def read_all(store: ObjectStore, key: str) -> bytes:
    return b"".join([chunk async for chunk in store.get(key)])


class StoreContract:
    async def test_ping(self, store: ObjectStore) -> None:
        await store.ping()

    async def test_put_then_get_streams_the_same_bytes(self, store: ObjectStore) -> None:
        data = os.urandom(3 * MIB + 123)  # several chunks, not a multiple of the chunk size
        info = await store.put("dir/blob.bin", chunks_of(data), content_type="application/x-test")
        assert info.size == len(data)
        assert info.sha256 == hashlib.sha256(data).hexdigest()
        assert info.native_checksums  # the store's own checksum was read and compared
        assert await read_all(store, "dir/blob.bin") == data

    async def test_head_reports_size_and_sha256(self, store: ObjectStore) -> None:
        data = b"hello, clouds"
        await store.put("head.txt", chunks_of(data), content_type="text/plain")
        info = await store.head("head.txt")
        assert info is not None
        assert (info.key, info.size) == ("head.txt", len(data))
        assert info.sha256 == hashlib.sha256(data).hexdigest()
        assert info.content_type == "text/plain"
        assert await store.head("missing.txt") is None

    async def test_put_replaces(self, store: ObjectStore) -> None:
        await store.put("k", chunks_of(b"first"))
        await store.put("k", chunks_of(b"second"))
        assert await read_all(store, "k") == b"second"

    async def test_an_empty_object(self, store: ObjectStore) -> None:
        info = await store.put("empty", chunks_of(b""))
        assert info.size == 0
        assert await read_all(store, "empty") == b""

    async def test_delete_is_idempotent(self, store: ObjectStore) -> None:
        await store.put("gone", chunks_of(b"x"))
        assert await store.delete("gone") is True
        assert await store.delete("gone") is False
        assert await store.head("gone") is None

    async def test_get_of_a_missing_object_is_a_key_error(self, store: ObjectStore) -> None:
        with pytest.raises(KeyError):
            await read_all(store, f"missing-{uuid.uuid4()}")

    async def test_list_by_prefix_in_key_order(self, store: ObjectStore) -> None:
        for key in ("b/2", "a/1", "b/1", "c"):
            await store.put(key, chunks_of(key.encode()))
        listed = [info.key async for info in store.list("b/")]
        assert listed == ["b/1", "b/2"]
        everything = [info.key async for info in store.list()]
        assert everything == sorted(everything)
        assert {"a/1", "b/1", "b/2", "c"} <= set(everything)

    async def test_connect_is_idempotent(self, store: ObjectStore) -> None:
        await store.connect()
        await store.connect()
        await store.ping()

    async def test_an_unreachable_store_is_a_retryable_error(
        self, unreachable_store: ObjectStore
    ) -> None:
        with pytest.raises(StoreUnavailableError):
            await unreachable_store.ping()
        with pytest.raises(StoreUnavailableError):
            await unreachable_store.put("x", chunks_of(b"x"))
        await unreachable_store.close()
