"""The local filesystem store (the embedded default)."""

from __future__ import annotations

import asyncio
import hashlib
import multiprocessing
import os
import sys
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from nexpo_workflows.config import Settings
from nexpo_workflows.storage import ObjectStore, enabled_store_names
from nexpo_workflows.storage.local import LocalStore
from tests.store_contract import StoreContract, chunks_of, read_all


class TestLocalStore(StoreContract):
    @pytest.fixture
    async def store(self, tmp_path: Path) -> AsyncIterator[ObjectStore]:
        store = LocalStore(tmp_path / "objects")
        await store.connect()
        yield store
        await store.close()

    @pytest.fixture
    def unreachable_store(self, tmp_path: Path) -> ObjectStore:
        (tmp_path / "a-file").write_text("")
        return LocalStore(tmp_path / "a-file" / "objects")

    async def test_keys_cannot_escape_the_store(self, store: ObjectStore) -> None:
        with pytest.raises(ValueError, match="invalid object key"):
            await store.put("../outside", chunks_of(b"x"))


def test_the_local_store_is_the_default_until_a_cloud_is_enabled() -> None:
    assert enabled_store_names(Settings(_env_file=None)) == ["local"]
    assert enabled_store_names(Settings(_env_file=None, enable_s3=True)) == ["s3"]


def _put_many(root: Path, key: str, contents: list[bytes]) -> None:
    """One writer: its own store instance and event loop, as another thread or process has."""

    async def put_all() -> None:
        store = LocalStore(root)
        for content in contents:
            await store.put(key, chunks_of(content, size=7))

    asyncio.run(put_all())


async def test_concurrent_puts_of_one_key_leave_metadata_that_matches_the_content(
    tmp_path: Path,
) -> None:
    root = tmp_path / "objects"
    writers = [
        [f"writer {w} version {v} ".encode() * (w + v + 1) for v in range(15)] for w in range(6)
    ]
    with ThreadPoolExecutor(len(writers)) as pool:
        for done in [pool.submit(_put_many, root, "shared/key", contents) for contents in writers]:
            done.result()
    store = LocalStore(root)
    content = await read_all(store, "shared/key")
    info = await store.head("shared/key")
    assert info is not None
    assert content in {content for contents in writers for content in contents}
    assert info.sha256 == hashlib.sha256(content).hexdigest()
    assert info.size == len(content)
    assert [i.key async for i in store.list()] == ["shared/key"]


async def test_concurrent_puts_from_processes_agree_with_the_content(tmp_path: Path) -> None:
    root = tmp_path / "objects"
    writers = [[f"process {w} version {v}".encode() * 50 for v in range(10)] for w in range(4)]
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=_put_many, args=(root, "key", contents)) for contents in writers
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
        assert process.exitcode == 0
    store = LocalStore(root)
    info = await store.head("key")
    assert info is not None
    assert info.sha256 == hashlib.sha256(await read_all(store, "key")).hexdigest()


async def test_a_crash_after_the_content_moved_in_leaves_no_stale_metadata(
    tmp_path: Path,
) -> None:
    """What a writer killed between its two renames leaves: the new content, the old
    metadata. ``head`` must describe the content, not the metadata file."""
    store = LocalStore(tmp_path / "objects")
    await store.put("key", chunks_of(b"old content"), content_type="text/plain")
    new = tmp_path / "objects" / ".key.crashed-writer.nexpo-partial"
    new.write_bytes(b"new content, longer")
    os.replace(new, tmp_path / "objects" / "key")
    info = await store.head("key")
    assert info is not None
    assert info.sha256 == hashlib.sha256(b"new content, longer").hexdigest()
    assert info.size == len(b"new content, longer")
    assert info.content_type == "text/plain"


async def test_a_writer_killed_mid_put_leaves_the_old_object_whole(tmp_path: Path) -> None:
    root = tmp_path / "objects"
    store = LocalStore(root)
    await store.put("key", chunks_of(b"first version"))
    script = (
        "import asyncio, sys\n"
        "from pathlib import Path\n"
        "from nexpo_workflows.storage.local import LocalStore\n"
        "async def endless():\n"
        "    while True:\n"
        "        yield b'x' * 4096\n"
        "        print('writing', flush=True)\n"
        "        await asyncio.sleep(0.01)\n"
        "asyncio.run(LocalStore(Path(sys.argv[1])).put('key', endless()))\n"
    )
    writer = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, str(root), stdout=asyncio.subprocess.PIPE
    )
    assert writer.stdout is not None
    for _ in range(5):
        await writer.stdout.readline()
    writer.kill()
    await writer.wait()
    info = await store.head("key")
    assert info is not None
    assert info.sha256 == hashlib.sha256(b"first version").hexdigest()
    assert await read_all(store, "key") == b"first version"
    assert [i.key async for i in store.list()] == ["key"]
    # The next write goes through despite the dead writer's leftovers.
    await store.put("key", chunks_of(b"second version"))
    info = await store.head("key")
    assert info is not None
    assert info.sha256 == hashlib.sha256(b"second version").hexdigest()
