"""The embedded default object store: files under a directory, written atomically.

An object is its content file (named by the key) and a metadata file beside it. A ``put``
streams the content into a temporary file of its own, makes it durable and renames it into
place, then does the same for the metadata, both under the key's lock so concurrent writers of
one key (threads or processes) commit one after the other. The metadata names the content file
it describes (inode, size, modification time): after a crash between the two renames, ``head``
sees that the content is not the one described and answers from the content itself.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, ClassVar, Self

from pydantic import BaseModel

from nexpo_workflows.config import Settings
from nexpo_workflows.storage.base import (
    CHUNK_SIZE,
    Digests,
    ObjectInfo,
    ObjectStore,
    StoreUnavailableError,
)

_META_SUFFIX = ".nexpo-meta.json"
_TEMP_SUFFIX = ".nexpo-partial"
_LOCK_SUFFIX = ".nexpo-lock"
# Files of the store's own that share the objects' directories: never keys.
_INTERNAL_SUFFIXES = (_META_SUFFIX, _TEMP_SUFFIX, _LOCK_SUFFIX)


class _ContentStamp(BaseModel):
    """Which file the metadata describes: a replaced content file has another inode."""

    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> _ContentStamp:
        stat = path.stat()
        return cls(inode=stat.st_ino, size=stat.st_size, mtime_ns=stat.st_mtime_ns)


class _StoredMeta(BaseModel):
    info: ObjectInfo
    content: _ContentStamp


def _temp_path(path: Path) -> Path:
    # One per write: two writers of a key never share (and interleave in) a file.
    return path.with_name(f".{path.name}.{uuid.uuid4().hex}{_TEMP_SUFFIX}")


def _meta_path(path: Path) -> Path:
    return path.with_name(path.name + _META_SUFFIX)


def _write_durably(file: BinaryIO) -> None:
    file.flush()
    os.fsync(file.fileno())


def _sync_directory(directory: Path) -> None:
    """Make the renames in ``directory`` survive a power loss."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@contextmanager
def _key_lock(path: Path) -> Iterator[None]:
    """Exclusive per key, across threads and processes (each holder opens its own file)."""
    with path.with_name(f".{path.name}{_LOCK_SUFFIX}").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _commit(path: Path, content: Path, info: ObjectInfo) -> None:
    """Content into place, then metadata describing that very file, under the key's lock."""
    meta_temp = _temp_path(_meta_path(path))
    try:
        with _key_lock(path):
            os.replace(content, path)
            meta = _StoredMeta(info=info, content=_ContentStamp.of(path))
            with meta_temp.open("wb") as file:
                file.write(meta.model_dump_json().encode())
                _write_durably(file)
            os.replace(meta_temp, _meta_path(path))
        _sync_directory(path.parent)
    finally:
        meta_temp.unlink(missing_ok=True)


def _hash_file(path: Path) -> Digests:
    digests = Digests()
    with path.open("rb") as file:
        while chunk := file.read(CHUNK_SIZE):
            digests.update(chunk)
    return digests


def _info(key: str, digests: Digests, content_type: str | None) -> ObjectInfo:
    return ObjectInfo(
        key=key,
        size=digests.size,
        sha256=digests.sha256.hexdigest(),
        content_type=content_type,
        native_checksums={"md5": digests.md5.hexdigest()},
    )


def _read_info(key: str, path: Path) -> ObjectInfo | None:
    """The metadata if it describes the content file as it is; else computed from the content
    (what a crash between the two renames leaves). None when there is no content."""
    try:
        stamp = _ContentStamp.of(path)
    except FileNotFoundError:
        return None
    try:
        meta = _StoredMeta.model_validate_json(_meta_path(path).read_bytes())
    except (FileNotFoundError, ValueError):
        meta = None
    if meta is not None and meta.content == stamp:
        return meta.info
    return _info(key, _hash_file(path), meta.info.content_type if meta else None)


class LocalStore(ObjectStore):
    name: ClassVar[str] = "local"

    def __init__(self, root: Path) -> None:
        self.root = root

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        return cls(settings.local_store_path or settings.data_dir / "objects")

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        # A key is a name inside the store, never a way out of it.
        if (
            not key
            or key.endswith(_INTERNAL_SUFFIXES)
            or not path.is_relative_to(self.root.resolve())
        ):
            raise ValueError(f"invalid object key {key!r}")
        return path

    async def connect(self) -> None:
        try:
            await asyncio.to_thread(self.root.mkdir, parents=True, exist_ok=True)
        except OSError as error:
            raise StoreUnavailableError(f"local: cannot use {self.root}: {error}") from error

    async def close(self) -> None:
        return None

    async def ping(self) -> None:
        await self.connect()
        if not os.access(self.root, os.W_OK):
            raise StoreUnavailableError(f"local: {self.root} is not writable")

    async def put(
        self, key: str, chunks: AsyncIterator[bytes], *, content_type: str | None = None
    ) -> ObjectInfo:
        await self.connect()
        path = self._path(key)
        temp = _temp_path(path)
        digests = Digests()
        await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
        try:
            with temp.open("wb") as file:
                async for chunk in digests.wrap(chunks):
                    await asyncio.to_thread(file.write, chunk)
                await asyncio.to_thread(_write_durably, file)
            info = _info(key, digests, content_type)
            await asyncio.to_thread(_commit, path, temp, info)
        finally:
            temp.unlink(missing_ok=True)
        return info

    async def get(self, key: str) -> AsyncIterator[bytes]:
        path = self._path(key)
        if not path.is_file():
            raise KeyError(key)
        with path.open("rb") as file:
            while chunk := await asyncio.to_thread(file.read, CHUNK_SIZE):
                yield chunk

    async def head(self, key: str) -> ObjectInfo | None:
        return await asyncio.to_thread(_read_info, key, self._path(key))

    async def delete(self, key: str) -> bool:
        path = self._path(key)
        if not path.parent.is_dir():
            return False
        # The lock file stays: removing it while a writer waits on it would let the next one
        # lock a new file, and two writers would commit at once.
        with _key_lock(path):
            existed = path.is_file()
            path.unlink(missing_ok=True)
            _meta_path(path).unlink(missing_ok=True)
        return existed

    async def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        if not self.root.is_dir():
            return
        root = self.root.resolve()
        keys = sorted(
            path.relative_to(root).as_posix()
            for path in root.rglob("*")
            if path.is_file() and not path.name.endswith(_INTERNAL_SUFFIXES)
        )
        for key in keys:
            if key.startswith(prefix):
                info = await self.head(key)
                if info is not None:
                    yield info
