"""Azure Blob Storage through the asynchronous ``azure-storage-blob`` client.

An object is a block blob written block by block (Put Block, then Put Block List), so an
upload never holds more than one block in memory, and a reader never sees a half-written
blob: the blob changes only when the block list is committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any, ClassVar, Self

import aiohttp
from azure.core.exceptions import (
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.storage.blob import BlobBlock, BlobProperties, ContentSettings
from azure.storage.blob.aio import BlobServiceClient, ContainerClient
from pydantic import SecretStr

from nexpo_workflows.config import ConfigError, Settings
from nexpo_workflows.errors import first_line
from nexpo_workflows.storage.base import (
    SHA256_METADATA,
    ChecksumMismatchError,
    Digests,
    ObjectInfo,
    ObjectStore,
    StoreUnavailableError,
)

# Azure metadata names must be C# identifiers, so the common ``nexpo-sha256`` (a hyphen) is
# refused with 400; this store alone keeps the digest under a hyphen-free name and maps it to
# and from ``ObjectInfo.sha256``, which is what other stores and callers compare.
AZURE_SHA256_METADATA = SHA256_METADATA.replace("-", "")

# 4 MiB is the largest range the service returns an MD5 for, so downloads can be verified
# per chunk; uploads use the same size so memory stays bounded the same way both ways.
BLOCK_SIZE = 4 * 1024 * 1024
DEFAULT_CLIENT_OPTIONS: dict[str, Any] = {
    "max_single_get_size": BLOCK_SIZE,
    "max_chunk_get_size": BLOCK_SIZE,
}
# The SDK wraps transport failures in ServiceRequestError/ServiceResponseError; the others
# are what may still escape it from aiohttp.
UNAVAILABLE = (
    ServiceRequestError,
    ServiceResponseError,
    aiohttp.ClientError,
    OSError,
    TimeoutError,
)
# Timeout and throttling are transient by design, like every 5xx.
TRANSIENT_STATUSES = frozenset({408, 429})
# Fields of a connection string whose values are credentials.
SECRET_FIELDS = ("AccountKey", "SharedAccessSignature")


class AzureBlobStore(ObjectStore):
    name: ClassVar[str] = "azure"

    def __init__(self, connection_string: SecretStr, container: str, **client_options: Any) -> None:
        """``client_options`` go to ``BlobServiceClient`` (timeouts, retries, chunk sizes)."""
        self._connection_string = connection_string
        self.container = container
        self._client_options = {**DEFAULT_CLIENT_OPTIONS, **client_options}
        self._client: BlobServiceClient | None = None
        self._container: ContainerClient | None = None
        # Concurrent first calls would otherwise each build a client and leak all but one.
        self._connecting = asyncio.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        if settings.azure_storage_connection_string is None:
            raise ConfigError(
                "AZURE_STORAGE_CONNECTION_STRING must be set when ENABLE_AZURE_BLOB is on"
            )
        return cls(settings.azure_storage_connection_string, settings.azure_blob_container)

    async def connect(self) -> None:
        async with self._connecting:
            if self._container is None:
                try:
                    client = BlobServiceClient.from_connection_string(
                        self._connection_string.get_secret_value(), **self._client_options
                    )
                except ValueError:
                    # The SDK's message may quote the string, and with it the account key.
                    raise ConfigError("azure: the connection string is malformed") from None
                self._client, self._container = client, client.get_container_client(self.container)
            # Always asked, not only with a new client: a container deleted (or an emulator
            # restarted) since is recreated by connecting again.
            with self._reporting_unavailable(), contextlib.suppress(ResourceExistsError):
                await self._container.create_container()

    async def close(self) -> None:
        if self._client is not None:
            client, self._client, self._container = self._client, None, None
            await client.close()

    async def _ready_container(self) -> ContainerClient:
        if self._container is None:
            await self.connect()
        assert self._container is not None
        return self._container

    def _unavailable(self, error: BaseException) -> StoreUnavailableError:
        detail = first_line(error)
        for part in self._connection_string.get_secret_value().split(";"):
            field, _, value = part.partition("=")
            if field in SECRET_FIELDS and value:
                detail = detail.replace(value, "***")
        return StoreUnavailableError(f"{self.name}: {detail}")

    @contextlib.contextmanager
    def _reporting_unavailable(self) -> Iterator[None]:
        try:
            yield
        except UNAVAILABLE as error:
            raise self._unavailable(error) from error
        except HttpResponseError as error:
            status = error.status_code or 0
            if status >= 500 or status in TRANSIENT_STATUSES:
                raise self._unavailable(error) from error
            raise

    async def ping(self) -> None:
        container = await self._ready_container()
        with self._reporting_unavailable():
            try:
                # One attempt, as the other stores' pings: a probe must answer "down" at once,
                # not after the SDK's retries have used up the probe's time.
                await container.get_container_properties(retry_total=0)
            except ResourceNotFoundError:
                raise StoreUnavailableError(
                    f"{self.name}: container {self.container!r} does not exist"
                ) from None

    def _content_settings(self, content_type: str | None, md5: bytes) -> ContentSettings:
        """What the blob is declared to be; the service reports it back for verification."""
        return ContentSettings(content_type=content_type, content_md5=bytearray(md5))

    async def put(
        self, key: str, chunks: AsyncIterator[bytes], *, content_type: str | None = None
    ) -> ObjectInfo:
        blob = (await self._ready_container()).get_blob_client(key)
        # Uncommitted blocks are shared by every writer of the blob: ids unique to this
        # upload keep two concurrent puts of one key from committing each other's blocks.
        # Every id of a blob must have the same length, hence the fixed-width counter.
        upload = uuid.uuid4().hex
        blocks: list[BlobBlock] = []
        digests = Digests()
        buffer = bytearray()

        async def stage(data: bytes | bytearray) -> None:
            block_id = f"{upload}-{len(blocks):06d}"
            with self._reporting_unavailable():
                # The SDK sends the block's MD5 and the service refuses a block that differs.
                await blob.stage_block(block_id, bytes(data), validate_content=True)
            blocks.append(BlobBlock(block_id))

        async for chunk in digests.wrap(chunks):
            buffer += chunk
            if len(buffer) >= BLOCK_SIZE:
                await stage(buffer)
                buffer.clear()
        if buffer:
            await stage(buffer)

        md5 = digests.md5.digest()
        with self._reporting_unavailable():
            await blob.commit_block_list(
                blocks,
                content_settings=self._content_settings(content_type, md5),
                metadata={AZURE_SHA256_METADATA: digests.sha256.hexdigest()},
            )
            properties = await blob.get_blob_properties()
        info = self._info(properties)
        stored_md5 = info.native_checksums.get("md5")
        if stored_md5 != md5.hex() or info.size != digests.size:
            with self._reporting_unavailable(), contextlib.suppress(ResourceNotFoundError):
                await blob.delete_blob(delete_snapshots="include")
            raise ChecksumMismatchError(
                f"{self.name}: {key!r} holds {info.size} bytes with MD5 {stored_md5}, "
                f"but {digests.size} bytes with MD5 {md5.hex()} were sent; it was deleted"
            )
        return info

    def _info(self, properties: BlobProperties) -> ObjectInfo:
        settings = properties.content_settings
        md5 = settings.content_md5
        return ObjectInfo(
            key=properties.name,
            size=properties.size,
            sha256=(properties.metadata or {}).get(AZURE_SHA256_METADATA),
            content_type=settings.content_type,
            native_checksums={"md5": bytes(md5).hex()} if md5 else {},
        )

    async def get(self, key: str) -> AsyncIterator[bytes]:
        blob = (await self._ready_container()).get_blob_client(key)
        with self._reporting_unavailable():
            try:
                # Each range comes with its MD5 (ranges are at most 4 MiB), which the SDK checks.
                download = await blob.download_blob(validate_content=True)
            except ResourceNotFoundError:
                raise KeyError(key) from None
            async for chunk in download.chunks():
                yield chunk

    async def head(self, key: str) -> ObjectInfo | None:
        blob = (await self._ready_container()).get_blob_client(key)
        with self._reporting_unavailable():
            try:
                return self._info(await blob.get_blob_properties())
            except ResourceNotFoundError:
                return None

    async def delete(self, key: str) -> bool:
        blob = (await self._ready_container()).get_blob_client(key)
        with self._reporting_unavailable():
            try:
                # A blob with snapshots cannot be deleted alone; the object is all of them.
                await blob.delete_blob(delete_snapshots="include")
            except ResourceNotFoundError:
                return False
        return True

    async def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        container = await self._ready_container()
        with self._reporting_unavailable():
            # The service lists blob names in lexicographic (key) order.
            async for properties in container.list_blobs(
                name_starts_with=prefix or None, include=["metadata"]
            ):
                yield self._info(properties)
