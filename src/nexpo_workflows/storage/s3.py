"""Amazon S3 (or an S3-compatible store such as MinIO or moto), through aiobotocore.

Uploads stream: an object smaller than one part (``PART_SIZE``) goes up in one PutObject,
a larger one as a multipart upload of ``PART_SIZE`` parts, so at most about two parts are held
in memory whatever the object's size.

How the stored bytes are checked against the bytes sent:

* Every request that carries content sends its ``Content-MD5`` (and PutObject its
  ``x-amz-checksum-sha256``): real S3 rejects a body damaged in transit with ``BadDigest``,
  reported here as ``ChecksumMismatchError``.
* The ETag S3 returns is compared with the MD5 computed here: for PutObject and for each
  UploadPart it is the MD5 of the bytes received, for CompleteMultipartUpload the MD5 of the
  parts' MD5s followed by ``-<parts>``. This is what S3 returns for unencrypted and SSE-S3
  objects (the default), and what moto implements; a bucket with SSE-KMS or SSE-C default
  encryption returns other ETags and is not supported.
* A multipart upload has to declare its metadata before its first part, when the SHA-256 of
  the whole stream is not known yet, so the SHA-256 is recorded afterwards by copying the
  object onto itself (server side, no bytes through this process) with the new metadata and
  ``ChecksumAlgorithm=SHA256``: S3 then computes the SHA-256 of every stored byte and it is
  compared with the SHA-256 of the stream, an end-to-end check. CopyObject is limited to
  5 GiB, hence ``MAX_OBJECT_SIZE``.

On a mismatch the multipart upload is aborted, or the object deleted, and nothing is left
under the key. ``list`` heads every listed object (one request each, concurrently per page)
so that its results carry the SHA-256 like ``head``'s do.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from typing import Any, ClassVar, Self

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotocoreConnectionError
from pydantic import SecretStr

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

MIB = 1024 * 1024
# S3's minimum part size is 5 MiB (except the last); 8 MiB is the AWS CLI's default.
PART_SIZE = 8 * MIB
MAX_OBJECT_SIZE = 5 * 1024 * MIB

_UNAVAILABLE_CODES = {
    "SlowDown",
    "ServiceUnavailable",
    "InternalError",
    "RequestTimeout",
    "Throttling",
    "ThrottlingException",
}
_MISMATCH_CODES = {"BadDigest", "XAmzContentSHA256Mismatch"}


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


def _etag(response: dict[str, Any]) -> str:
    return str(response.get("ETag", "")).strip('"')


def _error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


@contextlib.contextmanager
def _mapped_errors(action: str) -> Iterator[None]:
    """Turn botocore's transport and server failures into the store's error types."""
    try:
        yield
    except (BotocoreConnectionError, HTTPClientError) as error:
        raise StoreUnavailableError(f"s3: {action}: {error}") from error
    except ClientError as error:
        code = _error_code(error)
        status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
        if code in _MISMATCH_CODES:
            raise ChecksumMismatchError(f"s3: {action}: {code}") from error
        if status >= 500 or code in _UNAVAILABLE_CODES:
            raise StoreUnavailableError(f"s3: {action}: {code or status}") from error
        raise


class S3Store(ObjectStore):
    name: ClassVar[str] = "s3"

    def __init__(
        self,
        bucket: str,
        *,
        region: str = "us-east-1",
        endpoint_url: str | None = None,
        access_key_id: SecretStr | None = None,
        secret_access_key: SecretStr | None = None,
        config: AioConfig | None = None,
    ) -> None:
        self.bucket = bucket
        self.region = region
        self.endpoint_url = endpoint_url
        self._access_key_id = access_key_id
        self._secret_access_key = secret_access_key
        self._config = config
        self._exit_stack: AsyncExitStack | None = None
        self._client: Any = None
        # Two first calls at once would otherwise each open a client, and one would leak.
        self._client_lock = asyncio.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        return cls(
            settings.s3_bucket,
            region=settings.s3_region,
            endpoint_url=settings.s3_endpoint_url,
            access_key_id=settings.aws_access_key_id,
            secret_access_key=settings.aws_secret_access_key,
        )

    async def _get_client(self) -> Any:
        async with self._client_lock:
            if self._client is None:
                await self._open_client()
        return self._client

    async def _open_client(self) -> None:
        config = AioConfig(
            # S3-compatible servers are addressed by host name or IP, without the
            # per-bucket DNS names virtual-hosted addressing needs.
            s3={"addressing_style": "path"} if self.endpoint_url else None
        )
        if self._config is not None:
            config = config.merge(self._config)
        credentials: dict[str, str] = {}
        # Both or neither: otherwise botocore's default chain (environment, profile, role).
        if self._access_key_id is not None and self._secret_access_key is not None:
            credentials = {
                "aws_access_key_id": self._access_key_id.get_secret_value(),
                "aws_secret_access_key": self._secret_access_key.get_secret_value(),
            }
        stack = AsyncExitStack()
        self._client = await stack.enter_async_context(
            get_session().create_client(
                "s3",
                region_name=self.region,
                endpoint_url=self.endpoint_url,
                config=config,
                **credentials,
            )
        )
        self._exit_stack = stack

    async def connect(self) -> None:
        client = await self._get_client()
        create: dict[str, Any] = {"Bucket": self.bucket}
        if self.region != "us-east-1":
            create["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        with _mapped_errors(f"creating bucket {self.bucket}"):
            try:
                await client.create_bucket(**create)
            except ClientError as error:
                if _error_code(error) != "BucketAlreadyOwnedByYou":
                    raise

    async def close(self) -> None:
        stack, self._exit_stack, self._client = self._exit_stack, None, None
        if stack is not None:
            await stack.aclose()

    async def ping(self) -> None:
        client = await self._get_client()
        with _mapped_errors(f"reaching bucket {self.bucket}"):
            await client.head_bucket(Bucket=self.bucket)

    async def put(
        self, key: str, chunks: AsyncIterator[bytes], *, content_type: str | None = None
    ) -> ObjectInfo:
        client = await self._get_client()
        digests = Digests()
        buffer = bytearray()
        upload = _MultipartUpload(client, self.bucket, key, content_type)
        try:
            async for chunk in digests.wrap(chunks):
                if digests.size > MAX_OBJECT_SIZE:
                    raise ValueError(f"s3: {key!r} is larger than {MAX_OBJECT_SIZE} bytes")
                buffer += chunk
                while len(buffer) >= PART_SIZE:
                    await upload.send_part(bytes(buffer[:PART_SIZE]))
                    del buffer[:PART_SIZE]
            if not upload.started:
                return await self._put_small(key, bytes(buffer), digests, content_type)
            if buffer:
                await upload.send_part(bytes(buffer))
            await upload.complete()
        except BaseException:
            await upload.abort()
            raise
        return await self._record_sha256(key, digests, content_type)

    async def _put_small(
        self, key: str, data: bytes, digests: Digests, content_type: str | None
    ) -> ObjectInfo:
        client = await self._get_client()
        sha256 = digests.sha256.hexdigest()
        extra = {"ContentType": content_type} if content_type else {}
        with _mapped_errors(f"putting {key!r}"):
            response = await client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=data,
                ContentMD5=_b64(digests.md5.digest()),
                ChecksumSHA256=_b64(digests.sha256.digest()),
                Metadata={SHA256_METADATA: sha256},
                **extra,
            )
        native = await self._verified(key, response, digests.md5.hexdigest(), digests)
        return ObjectInfo(
            key=key,
            size=digests.size,
            sha256=sha256,
            content_type=content_type,
            native_checksums=native,
        )

    async def _record_sha256(
        self, key: str, digests: Digests, content_type: str | None
    ) -> ObjectInfo:
        client = await self._get_client()
        sha256 = digests.sha256.hexdigest()
        extra = {"ContentType": content_type} if content_type else {}
        try:
            with _mapped_errors(f"recording the SHA-256 of {key!r}"):
                response = await client.copy_object(
                    Bucket=self.bucket,
                    Key=key,
                    CopySource={"Bucket": self.bucket, "Key": key},
                    MetadataDirective="REPLACE",
                    Metadata={SHA256_METADATA: sha256},
                    ChecksumAlgorithm="SHA256",
                    **extra,
                )
        except BaseException:
            # Without its SHA-256 the object could never be verified: better none at all.
            await self._delete_quietly(key)
            raise
        native = await self._verified(
            key, response["CopyObjectResult"], digests.md5.hexdigest(), digests
        )
        return ObjectInfo(
            key=key,
            size=digests.size,
            sha256=sha256,
            content_type=content_type,
            native_checksums=native,
        )

    async def _verified(
        self, key: str, response: dict[str, Any], md5: str, digests: Digests
    ) -> dict[str, str]:
        """The object's native checksums, once they match what was sent (else it is deleted)."""
        native = {"etag": _etag(response)}
        problems = []
        if native["etag"] != md5:
            problems.append(f"ETag {native['etag']} is not the MD5 sent, {md5}")
        # Returned when the server computed it (S3 does; some S3-compatible servers do not).
        if server_sha256 := response.get("ChecksumSHA256"):
            native["sha256"] = str(server_sha256)
            if native["sha256"] != _b64(digests.sha256.digest()):
                problems.append("the SHA-256 S3 computed is not the SHA-256 sent")
        if problems:
            await self._delete_quietly(key)
            raise ChecksumMismatchError(f"s3: {key!r}: {'; '.join(problems)}")
        return native

    async def _delete_quietly(self, key: str) -> None:
        # Cleanup after a failure must not hide the failure itself.
        with contextlib.suppress(Exception):
            await self._client.delete_object(Bucket=self.bucket, Key=key)

    async def get(self, key: str) -> AsyncIterator[bytes]:
        client = await self._get_client()
        with _mapped_errors(f"getting {key!r}"):
            try:
                response = await client.get_object(Bucket=self.bucket, Key=key)
            except ClientError as error:
                if _error_code(error) == "NoSuchKey":
                    raise KeyError(key) from None
                raise
            body = response["Body"]
            # Closing releases the connection even when the reader stops early.
            async with body:
                async for chunk in body.iter_chunks(CHUNK_SIZE):
                    yield chunk

    async def head(self, key: str) -> ObjectInfo | None:
        client = await self._get_client()
        with _mapped_errors(f"reading {key!r}"):
            try:
                response = await client.head_object(
                    Bucket=self.bucket, Key=key, ChecksumMode="ENABLED"
                )
            except ClientError as error:
                if _error_code(error) in ("404", "NoSuchKey"):
                    return None
                raise
        native = {"etag": _etag(response)}
        if checksum := response.get("ChecksumSHA256"):
            native["sha256"] = str(checksum)
        metadata: dict[str, str] = response.get("Metadata", {})
        return ObjectInfo(
            key=key,
            size=int(response["ContentLength"]),
            sha256=metadata.get(SHA256_METADATA),
            content_type=response.get("ContentType"),
            native_checksums=native,
        )

    async def delete(self, key: str) -> bool:
        # DeleteObject succeeds whether or not the key existed; only a head can tell.
        existed = await self.head(key) is not None
        client = await self._get_client()
        with _mapped_errors(f"deleting {key!r}"):
            await client.delete_object(Bucket=self.bucket, Key=key)
        return existed

    async def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        client = await self._get_client()
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        with _mapped_errors(f"listing {prefix!r}"):
            # ListObjectsV2 returns keys in UTF-8 byte order, which is str order.
            async for page in pages:
                keys = [str(item["Key"]) for item in page.get("Contents", [])]
                for info in await asyncio.gather(*(self.head(key) for key in keys)):
                    # An object deleted between the listing and its head is simply gone.
                    if info is not None:
                        yield info


class _MultipartUpload:
    """One multipart upload, started with its first part; every part's ETag is checked."""

    def __init__(self, client: Any, bucket: str, key: str, content_type: str | None) -> None:
        self._client = client
        self._bucket = bucket
        self._key = key
        self._content_type = content_type
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        self._part_md5s: list[bytes] = []

    @property
    def started(self) -> bool:
        return self._upload_id is not None

    async def send_part(self, data: bytes) -> None:
        with _mapped_errors(f"uploading {self._key!r}"):
            if self._upload_id is None:
                extra = {"ContentType": self._content_type} if self._content_type else {}
                response = await self._client.create_multipart_upload(
                    Bucket=self._bucket, Key=self._key, **extra
                )
                self._upload_id = str(response["UploadId"])
            md5 = hashlib.md5(data, usedforsecurity=False).digest()
            number = len(self._parts) + 1
            response = await self._client.upload_part(
                Bucket=self._bucket,
                Key=self._key,
                UploadId=self._upload_id,
                PartNumber=number,
                Body=data,
                ContentMD5=_b64(md5),
            )
        if _etag(response) != md5.hex():
            raise ChecksumMismatchError(
                f"s3: {self._key!r} part {number}: ETag {_etag(response)} is not the MD5 "
                f"sent, {md5.hex()}"
            )
        self._parts.append({"PartNumber": number, "ETag": response["ETag"]})
        self._part_md5s.append(md5)

    async def complete(self) -> None:
        with _mapped_errors(f"completing {self._key!r}"):
            response = await self._client.complete_multipart_upload(
                Bucket=self._bucket,
                Key=self._key,
                UploadId=self._upload_id,
                MultipartUpload={"Parts": self._parts},
            )
        # From here on the object exists: a mismatch must remove it, not abort the upload.
        self._upload_id = None
        expected = (
            hashlib.md5(b"".join(self._part_md5s), usedforsecurity=False).hexdigest()
            + f"-{len(self._parts)}"
        )
        if _etag(response) != expected:
            with contextlib.suppress(Exception):
                await self._client.delete_object(Bucket=self._bucket, Key=self._key)
            raise ChecksumMismatchError(
                f"s3: {self._key!r}: ETag {_etag(response)} is not the one of the parts sent, "
                f"{expected}"
            )

    async def abort(self) -> None:
        upload_id, self._upload_id = self._upload_id, None
        if upload_id is not None:
            # Best effort: the upload's own error is the one to report.
            with contextlib.suppress(Exception):
                await self._client.abort_multipart_upload(
                    Bucket=self._bucket, Key=self._key, UploadId=upload_id
                )
