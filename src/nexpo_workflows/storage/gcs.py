"""Google Cloud Storage (or an emulator such as fake-gcs-server).

The client is the official ``google-cloud-storage`` rather than the async
``gcloud-aio-storage``: the latter's ``upload`` needs the content length up front (it sizes
the stream and sends it in one request, which means the whole object in memory or on disk
first), while the official client's ``blob.open("wb")`` runs a resumable upload of unknown
length in fixed chunks and ``blob.open("rb")`` downloads in ranged chunks. Both stream
against fake-gcs-server; the official client's calls are blocking, so each one runs in a
thread and the event loop never waits on the network.

The SHA-256 is known only once the last byte has passed, after the upload session was
opened, so it is written to the object's metadata by a patch guarded by the generation just
uploaded; until that patch lands a reader sees the object without it (``sha256=None``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any, ClassVar, ParamSpec, Self, TypeVar

import google_crc32c
import requests
from google.api_core import exceptions as api_exceptions
from google.api_core.retry import Retry
from google.auth import exceptions as auth_exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from google.cloud.storage import exceptions as storage_exceptions
from google.cloud.storage.retry import DEFAULT_RETRY

from nexpo_workflows.config import Settings
from nexpo_workflows.storage.base import (
    CHUNK_SIZE,
    SHA256_METADATA,
    ChecksumMismatchError,
    Digests,
    ObjectInfo,
    ObjectStore,
    StoreUnavailableError,
)

P = ParamSpec("P")
T = TypeVar("T")

# Connection refused/reset, timeouts, and a retry deadline spent on them.
_TRANSIENT_ERRORS: tuple[type[Exception], ...] = (
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    auth_exceptions.TransportError,
    api_exceptions.ServerError,
    api_exceptions.TooManyRequests,
    api_exceptions.RetryError,
)
LIST_PAGE_SIZE = 1000

_PING_TIMEOUT_SECONDS = 5.0


def _is_transient(error: Exception) -> bool:
    if isinstance(error, _TRANSIENT_ERRORS):
        return True
    # Upload and download chunks report HTTP failures with the media layer's own type.
    if isinstance(error, storage_exceptions.InvalidResponse):
        status = getattr(error.response, "status_code", 0)
        return bool(status == 429 or status >= 500)
    return False


def _md5_hex(md5_base64: str) -> str:
    return base64.b64decode(md5_base64).hex()


def _info(blob: Any) -> ObjectInfo:
    checksums: dict[str, str] = {}
    if blob.md5_hash:
        checksums["md5"] = _md5_hex(blob.md5_hash)
    if blob.crc32c:
        checksums["crc32c"] = blob.crc32c
    return ObjectInfo(
        key=blob.name,
        size=int(blob.size or 0),
        sha256=(blob.metadata or {}).get(SHA256_METADATA),
        content_type=blob.content_type,
        native_checksums=checksums,
    )


class GCSStore(ObjectStore):
    name: ClassVar[str] = "gcs"

    def __init__(
        self,
        bucket: str,
        *,
        project: str | None = None,
        endpoint_url: str | None = None,
        timeout_seconds: float = 60.0,
        retry_deadline_seconds: float = 120.0,
    ) -> None:
        self.bucket_name = bucket
        self.project = project
        self.endpoint_url = endpoint_url
        self.timeout_seconds = timeout_seconds
        self.retry: Retry = DEFAULT_RETRY.with_deadline(retry_deadline_seconds)
        self._client: Any = None

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        return cls(
            settings.gcs_bucket,
            project=settings.gcs_project,
            endpoint_url=settings.gcs_endpoint_url,
        )

    def _bucket(self) -> Any:
        # Built on first use, not only in connect(): the client itself makes no call, and
        # ping() must be able to report an unreachable store without a prior connect().
        if self._client is None:
            try:
                if self.endpoint_url:
                    self._client = storage.Client(
                        project=self.project,
                        credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
                        client_options={"api_endpoint": self.endpoint_url},
                    )
                else:
                    self._client = storage.Client(project=self.project)
            except auth_exceptions.DefaultCredentialsError as error:
                raise StoreUnavailableError(f"gcs: no credentials: {error}") from error
        return self._client.bucket(self.bucket_name)

    async def _run(self, call: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await asyncio.to_thread(call, *args, **kwargs)
        except Exception as error:
            if _is_transient(error):
                raise StoreUnavailableError(f"gcs: {error}") from error
            raise

    def _call_options(self) -> dict[str, Any]:
        return {"timeout": self.timeout_seconds, "retry": self.retry}

    async def connect(self) -> None:
        bucket = self._bucket()
        if await self._run(bucket.exists, **self._call_options()):
            return
        # Another process may create it between the check and here.
        with contextlib.suppress(api_exceptions.Conflict):
            await self._run(
                self._client.create_bucket, bucket, project=self.project, **self._call_options()
            )

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await asyncio.to_thread(client.close)

    async def ping(self) -> None:
        bucket = self._bucket()
        try:
            # One attempt with a short timeout: a probe must answer "down" quickly, and the
            # thread it runs in cannot be cancelled once the call has started.
            await self._run(bucket.reload, timeout=_PING_TIMEOUT_SECONDS, retry=None)
        except api_exceptions.NotFound as error:
            raise StoreUnavailableError(
                f"gcs: bucket {self.bucket_name!r} does not exist"
            ) from error

    async def _write(self, writer: Any, chunk: bytes) -> None:
        await self._run(writer.write, chunk)

    async def put(
        self, key: str, chunks: AsyncIterator[bytes], *, content_type: str | None = None
    ) -> ObjectInfo:
        blob = self._bucket().blob(key)
        digests = Digests()
        # MD5 alone is not enough: GCS omits md5Hash for some objects, never crc32c.
        crc32c = 0
        writer = blob.open(
            "wb",
            chunk_size=CHUNK_SIZE,
            content_type=content_type,
            timeout=self.timeout_seconds,
            retry=self.retry,
        )
        try:
            async for chunk in digests.wrap(chunks):
                crc32c = google_crc32c.extend(crc32c, chunk)
                await self._write(writer, chunk)
            await self._run(writer.close)
        except BaseException:
            # Best effort: an abandoned session expires on its own, and the error that
            # stopped the upload matters more than one from cancelling it.
            with contextlib.suppress(Exception):
                await asyncio.to_thread(writer.terminate)
            raise

        await self._run(blob.reload, **self._call_options())
        sent_md5 = base64.b64encode(digests.md5.digest()).decode()
        sent_crc32c = base64.b64encode(crc32c.to_bytes(4, "big")).decode()
        if (
            blob.size != digests.size
            or blob.crc32c != sent_crc32c
            or (blob.md5_hash is not None and blob.md5_hash != sent_md5)
        ):
            # Guarded by generation: a newer put of the same key is not ours to delete.
            with contextlib.suppress(api_exceptions.NotFound, api_exceptions.PreconditionFailed):
                await self._run(
                    blob.delete, if_generation_match=blob.generation, **self._call_options()
                )
            raise ChecksumMismatchError(
                f"gcs: {key!r} holds size={blob.size} md5={blob.md5_hash} "
                f"crc32c={blob.crc32c}; sent size={digests.size} md5={sent_md5} "
                f"crc32c={sent_crc32c}"
            )

        blob.metadata = {SHA256_METADATA: digests.sha256.hexdigest()}
        await self._run(blob.patch, if_generation_match=blob.generation, **self._call_options())
        return _info(blob)

    async def get(self, key: str) -> AsyncIterator[bytes]:
        bucket = self._bucket()
        blob = await self._run(bucket.get_blob, key, **self._call_options())
        if blob is None:
            raise KeyError(key)
        # The blob carries the generation just read, so every ranged read comes from that
        # one version even if the key is replaced meanwhile.
        reader = blob.open(
            "rb", chunk_size=CHUNK_SIZE, timeout=self.timeout_seconds, retry=self.retry
        )
        try:
            while chunk := await self._run(reader.read, CHUNK_SIZE):
                yield chunk
        finally:
            reader.close()

    async def head(self, key: str) -> ObjectInfo | None:
        bucket = self._bucket()
        blob = await self._run(bucket.get_blob, key, **self._call_options())
        return None if blob is None else _info(blob)

    async def delete(self, key: str) -> bool:
        blob = self._bucket().blob(key)
        try:
            await self._run(blob.delete, **self._call_options())
        except api_exceptions.NotFound:
            return False
        return True

    async def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        self._bucket()
        # The API returns names in lexicographic (key) order, one page per request.
        pages = self._client.list_blobs(
            self.bucket_name,
            prefix=prefix or None,
            page_size=LIST_PAGE_SIZE,
            **self._call_options(),
        ).pages
        while (page := await self._run(next, pages, None)) is not None:
            for blob in page:
                yield _info(blob)
