"""The embedded default object store: files under a directory, written atomically."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import ClassVar, Self

from nexpo_workflows.config import Settings
from nexpo_workflows.storage.base import (
    CHUNK_SIZE,
    Digests,
    ObjectInfo,
    ObjectStore,
    StoreUnavailableError,
)

_META_SUFFIX = ".nexpo-meta.json"


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
        if not key or key.endswith(_META_SUFFIX) or not path.is_relative_to(self.root.resolve()):
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
        partial = path.with_name(f".{path.name}.partial")
        digests = Digests()
        await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
        with partial.open("wb") as file:
            async for chunk in digests.wrap(chunks):
                await asyncio.to_thread(file.write, chunk)
        info = ObjectInfo(
            key=key,
            size=digests.size,
            sha256=digests.sha256.hexdigest(),
            content_type=content_type,
            native_checksums={"md5": digests.md5.hexdigest()},
        )
        meta = path.with_name(path.name + _META_SUFFIX)
        meta.write_text(info.model_dump_json())
        # The content appears under its name only once complete: a reader never sees half.
        os.replace(partial, path)
        return info

    async def get(self, key: str) -> AsyncIterator[bytes]:
        path = self._path(key)
        if not path.is_file():
            raise KeyError(key)
        with path.open("rb") as file:
            while chunk := await asyncio.to_thread(file.read, CHUNK_SIZE):
                yield chunk

    async def head(self, key: str) -> ObjectInfo | None:
        path = self._path(key)
        if not path.is_file():
            return None
        meta = path.with_name(path.name + _META_SUFFIX)
        return ObjectInfo.model_validate(json.loads(meta.read_text()))

    async def delete(self, key: str) -> bool:
        path = self._path(key)
        existed = path.is_file()
        path.unlink(missing_ok=True)
        path.with_name(path.name + _META_SUFFIX).unlink(missing_ok=True)
        return existed

    async def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        if not self.root.is_dir():
            return
        root = self.root.resolve()
        keys = sorted(
            path.relative_to(root).as_posix()
            for path in root.rglob("*")
            if path.is_file()
            and not path.name.endswith(_META_SUFFIX)
            and not path.name.endswith(".partial")
        )
        for key in keys:
            if key.startswith(prefix):
                info = await self.head(key)
                if info is not None:
                    yield info
