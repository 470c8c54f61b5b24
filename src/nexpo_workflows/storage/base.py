"""The interface every object store implements (local files, S3, Azure Blob, GCS)."""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from typing import ClassVar, Self

from pydantic import BaseModel, Field

from nexpo_workflows.config import Settings

CHUNK_SIZE = 1024 * 1024
# Every store keeps the SHA-256 of the content in the object's metadata under this name, so a
# copy can be verified end to end across clouds whose native checksums differ.
SHA256_METADATA = "nexpo-sha256"


class StoreUnavailableError(Exception):
    """The store cannot be reached or failed transiently; retrying may help."""


class ChecksumMismatchError(Exception):
    """What the store holds is not what was sent (or what its checksum says)."""


class ObjectInfo(BaseModel):
    key: str
    size: int = Field(ge=0)
    sha256: str | None = None
    content_type: str | None = None
    # The store's own checksums, as it reports them (e.g. {"md5": hex, "crc32c": base64}).
    native_checksums: dict[str, str] = Field(default_factory=dict)


class Digests:
    """SHA-256 and MD5 of a stream, computed while it passes (no second read)."""

    def __init__(self) -> None:
        self.sha256 = hashlib.sha256()
        self.md5 = hashlib.md5(usedforsecurity=False)
        self.size = 0

    def update(self, chunk: bytes) -> None:
        self.sha256.update(chunk)
        self.md5.update(chunk)
        self.size += len(chunk)

    async def wrap(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        async for chunk in chunks:
            self.update(chunk)
            yield chunk


class ObjectStore(ABC):
    """One bucket or container in one cloud. Objects stream in and out in chunks."""

    name: ClassVar[str]

    @classmethod
    @abstractmethod
    def from_settings(cls, settings: Settings) -> Self:
        """Build an unconnected instance from the store's variables in the settings."""

    @abstractmethod
    async def connect(self) -> None:
        """Open clients and create the bucket if it is missing (idempotent)."""

    @abstractmethod
    async def close(self) -> None:
        """Release clients; safe to call twice."""

    @abstractmethod
    async def ping(self) -> None:
        """One cheap call; raises StoreUnavailableError when the store is down."""

    @abstractmethod
    async def put(
        self, key: str, chunks: AsyncIterator[bytes], *, content_type: str | None = None
    ) -> ObjectInfo:
        """Stream ``chunks`` into ``key`` (replacing it), verify the store's checksum against
        the bytes sent, record their SHA-256, and return what is stored."""

    @abstractmethod
    def get(self, key: str) -> AsyncIterator[bytes]:
        """Stream the object's content; raises KeyError if there is no such object."""

    @abstractmethod
    async def head(self, key: str) -> ObjectInfo | None:
        """The object's size and checksums, or None."""

    @abstractmethod
    async def delete(self, key: str) -> bool:
        """Remove the object; True if it was there. Absent is not an error."""

    @abstractmethod
    def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        """Every object whose key starts with ``prefix``, in key order."""

    def sides(self) -> Sequence[ObjectStore]:
        """The stores behind this one: itself, or a store pair's primary and secondary. The
        routing records are written to each, so they can be read while one is down."""
        return (self,)
