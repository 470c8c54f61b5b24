"""MongoDB through PyMongo's native asyncio client.

A user is one document in ``users``: ``_id`` is the user id, so the primary key makes
creation idempotent, and a unique index on ``email`` rejects another id with the same email.

A dataset record is one document in ``nexpo_records`` whose ``_id`` is a string made of the
dataset and the record id (see ``record_key``), beside ``dataset`` and ``id`` fields that
make the document readable: the primary key alone serves every read, replace and delete by
(dataset, id), with no second index to maintain during a bulk sync. A string rather than an
``{dataset, id}`` sub-document: SecantusDB, the server of the tests, looks up a sub-document
``_id`` many times slower (9 s instead of 0.3 s for 1,000 upserts).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC
from typing import Any, ClassVar, Self, TypeVar

from bson.errors import InvalidDocument
from pymongo import AsyncMongoClient, ReplaceOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError, ConnectionFailure, DuplicateKeyError, WriteError

from nexpo_workflows.config import Settings
from nexpo_workflows.errors import first_line
from nexpo_workflows.providers.base import (
    RECORDS_STORE,
    DatabaseProvider,
    DatasetRecord,
    DuplicateEmailError,
    InvalidRecordError,
    KeysChecksum,
    ProviderUnavailableError,
    RecordBatch,
    RecordVersion,
    UserRecord,
    chunked,
    row_hash,
)

Document = dict[str, Any]
T = TypeVar("T")

COLLECTION = "users"
# Keys per $in query; the queries of one call are sent together. SecantusDB takes more than
# linearly longer as the list grows: the checksums of 10,000 records took 1.8 s 200 keys at a
# time, 1.1 s 100, 0.8 s 25, 1.0 s 10, 1.5 s 5 (a real server looks up 25 keys in a fraction
# of a millisecond, and answers the queries of a call side by side).
IN_LIST_CHUNK = 25

RECORD_PROJECTION = {"_id": 0, "id": 1, "version": 1, "deleted": 1, "data": 1}
VERSION_PROJECTION = {"_id": 0, "id": 1, "version": 1, "deleted": 1}

# ConnectionFailure is the base of AutoReconnect (and so of NotPrimaryError),
# NetworkTimeout and ServerSelectionTimeoutError: every "cannot talk to the server now".
UNAVAILABLE = (ConnectionFailure, OSError)
# A document the driver cannot encode (a NUL character in a field name, over 16 MB) or the
# server refuses to write (nested too deep, failing validation): the record's fault, final.
# DuplicateKeyError is a WriteError too, and is caught before these.
REFUSED = (InvalidDocument, WriteError, BulkWriteError)


def record_key(dataset: str, record_id: str) -> str:
    """``<length of dataset>:<dataset>:<id>``: the length keeps the key unambiguous whatever
    characters the dataset name holds."""
    return f"{len(dataset)}:{dataset}:{record_id}"


# MongoDB computes no MD5: each record keeps its ``row_hash`` in this field, written with it and
# summed by verification on the server.
ROW_HASH_FIELD = "h"
DUPLICATE_KEY = 11000


def record_document(dataset: str, record: DatasetRecord) -> Document:
    return {
        "_id": record_key(dataset, record.id),
        "dataset": dataset,
        **record.model_dump(),
        ROW_HASH_FIELD: row_hash(record.id, record.version, record.deleted),
    }


def batch_documents(dataset: str, batch: RecordBatch) -> list[Document]:
    prefix = record_key(dataset, "")
    return [
        {
            "_id": prefix + record_id,
            "dataset": dataset,
            "id": record_id,
            "version": version,
            "deleted": deleted,
            "data": data,
            ROW_HASH_FIELD: hashed,
        }
        for record_id, version, deleted, data, hashed in zip(
            batch.ids, batch.versions, batch.deleted, batch.values(), batch.hashes(), strict=True
        )
    ]


def records_filter(dataset: str, ids: Sequence[str]) -> Document:
    return {"_id": {"$in": [record_key(dataset, record_id) for record_id in ids]}}


class MongoProvider(DatabaseProvider):
    name: ClassVar[str] = "mongodb"

    def __init__(self, url: str, database: str, *, server_selection_timeout_ms: int = 5000) -> None:
        # Private and never formatted into a message: the URL may carry a password.
        self._url = url
        self.database = database
        self.server_selection_timeout_ms = server_selection_timeout_ms
        self._client: AsyncMongoClient[Document] | None = None
        self._users: AsyncCollection[Document] | None = None
        self._records: AsyncCollection[Document] | None = None
        # Concurrent first calls would otherwise each build a client and leak all but one.
        self._connecting = asyncio.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        return cls(settings.mongodb_url.get_secret_value(), settings.mongodb_database)

    async def connect(self) -> None:
        async with self._connecting:
            if self._client is not None:
                return
            client: AsyncMongoClient[Document] = AsyncMongoClient(
                self._url,
                serverSelectionTimeoutMS=self.server_selection_timeout_ms,
                tz_aware=True,
                tzinfo=UTC,
            )
            users = client[self.database][COLLECTION]
            try:
                await client.admin.command("ping")
                await users.create_index("email", unique=True)
            except BaseException as error:
                await client.close()
                if isinstance(error, UNAVAILABLE):
                    raise self._unavailable(error) from error
                raise
            self._client, self._users = client, users
            self._records = client[self.database][RECORDS_STORE]

    async def close(self) -> None:
        if self._client is not None:
            client, self._client, self._users, self._records = self._client, None, None, None
            await client.close()

    async def _ready_users(self) -> AsyncCollection[Document]:
        await self.connect()
        assert self._users is not None
        return self._users

    async def _ready_records(self) -> AsyncCollection[Document]:
        await self.connect()
        assert self._records is not None
        return self._records

    def _unavailable(self, error: BaseException) -> ProviderUnavailableError:
        # PyMongo names hosts but never credentials; the topology dump after the first
        # sentence only makes the message unreadable in logs.
        detail = str(error).split(", Topology Description:")[0].strip() or type(error).__name__
        return ProviderUnavailableError(f"{self.name}: {detail}")

    def _refused(self, error: BaseException) -> InvalidRecordError:
        return InvalidRecordError(f"{self.name}: {first_line(error)}")

    async def ping(self) -> None:
        await self.connect()
        assert self._client is not None
        try:
            await self._client.admin.command("ping")
        except UNAVAILABLE as error:
            raise self._unavailable(error) from error

    async def create_user(self, user: UserRecord) -> None:
        users = await self._ready_users()
        document = {"_id": user.id, **user.model_dump(exclude={"id"})}
        try:
            await users.insert_one(document)
            return
        except DuplicateKeyError:
            # Which index reported the clash is not reliable (servers differ when both
            # collide), so ask whether our id is there: then this is a retry of our insert.
            pass
        except UNAVAILABLE as error:
            raise self._unavailable(error) from error
        except REFUSED as error:
            raise self._refused(error) from error
        if await self.get_user(user.id) is None:
            raise DuplicateEmailError(f"{self.name}: a user with email {user.email} exists")

    async def get_user(self, user_id: str) -> UserRecord | None:
        users = await self._ready_users()
        try:
            document = await users.find_one({"_id": user_id})
        except UNAVAILABLE as error:
            raise self._unavailable(error) from error
        if document is None:
            return None
        document["id"] = document.pop("_id")
        return UserRecord.model_validate(document)

    async def delete_user(self, user_id: str) -> bool:
        users = await self._ready_users()
        try:
            result = await users.delete_one({"_id": user_id})
        except UNAVAILABLE as error:
            raise self._unavailable(error) from error
        return result.deleted_count > 0

    async def set_password_hash(self, user_id: str, password_hash: str) -> bool:
        users = await self._ready_users()
        try:
            result = await users.update_one(
                {"_id": user_id}, {"$set": {"password_hash": password_hash}}
            )
        except UNAVAILABLE as error:
            raise self._unavailable(error) from error
        return result.matched_count > 0

    async def upsert_records(self, dataset: str, records: Sequence[DatasetRecord]) -> None:
        if not records:
            return
        collection = await self._ready_records()
        documents = [record_document(dataset, record) for record in records]
        replacements = [
            ReplaceOne({"_id": document["_id"]}, document, upsert=True) for document in documents
        ]
        try:
            # Unordered: the server applies the whole batch instead of stopping at a failure,
            # and PyMongo splits it into as few commands as the server's limits allow.
            await collection.bulk_write(replacements, ordered=False)
        except UNAVAILABLE as error:
            raise self._unavailable(error) from error
        except REFUSED as error:
            raise self._refused(error) from error

    async def upsert_batch(self, dataset: str, batch: RecordBatch) -> None:
        """Unordered inserts, then a replace of the documents that were there already: on a
        new target (a first copy) every document is one insert, the cheapest write."""
        if not batch:
            return
        collection = await self._ready_records()
        documents = batch_documents(dataset, batch)
        try:
            try:
                await collection.insert_many(documents, ordered=False)
                return
            except BulkWriteError as error:
                errors = error.details.get("writeErrors", [])
                if any(e.get("code") != DUPLICATE_KEY for e in errors):
                    raise
                present = [documents[e["index"]] for e in errors]
            await collection.bulk_write(
                [ReplaceOne({"_id": d["_id"]}, d, upsert=True) for d in present], ordered=False
            )
        except UNAVAILABLE as error:
            raise self._unavailable(error) from error
        except REFUSED as error:
            raise self._refused(error) from error

    async def _in_chunks(
        self, dataset: str, ids: Sequence[str], query: Callable[[Document], Awaitable[T]]
    ) -> list[T]:
        """``query`` of each ``$in`` filter of ``IN_LIST_CHUNK`` of the ids, sent together."""
        try:
            return await asyncio.gather(
                *(query(records_filter(dataset, chunk)) for chunk in chunked(ids, IN_LIST_CHUNK))
            )
        except UNAVAILABLE as error:
            raise self._unavailable(error) from error

    async def checksums(
        self, dataset: str, key_sets: Sequence[Sequence[str]]
    ) -> list[KeysChecksum]:
        collection = await self._ready_records()

        async def summed(match: Document) -> KeysChecksum:
            cursor = await collection.aggregate(
                [
                    {"$match": match},
                    {
                        "$group": {
                            "_id": None,
                            "count": {"$sum": 1},
                            "total": {"$sum": f"${ROW_HASH_FIELD}"},
                        }
                    },
                ]
            )
            groups = await cursor.to_list()  # none where no key is there
            return KeysChecksum(sum(g["count"] for g in groups), sum(g["total"] for g in groups))

        found = []
        for keys in key_sets:
            parts = await self._in_chunks(dataset, keys, summed)
            found.append(KeysChecksum(sum(p.count for p in parts), sum(p.total for p in parts)))
        return found

    async def _find_in_chunks(
        self, dataset: str, ids: Sequence[str], projection: Document
    ) -> list[Document]:
        collection = await self._ready_records()

        async def found(match: Document) -> list[Document]:
            return await collection.find(match, projection).to_list()

        return [
            document for part in await self._in_chunks(dataset, ids, found) for document in part
        ]

    async def get_records(self, dataset: str, ids: Sequence[str]) -> list[DatasetRecord]:
        documents = await self._find_in_chunks(dataset, ids, RECORD_PROJECTION)
        return [DatasetRecord.model_validate(document) for document in documents]

    async def record_versions(self, dataset: str, ids: Sequence[str]) -> list[RecordVersion]:
        documents = await self._find_in_chunks(dataset, ids, VERSION_PROJECTION)
        return [RecordVersion.model_validate(document) for document in documents]

    async def delete_records(self, dataset: str, ids: Sequence[str]) -> int:
        collection = await self._ready_records()

        async def deleted(match: Document) -> int:
            return (await collection.delete_many(match)).deleted_count

        return sum(await self._in_chunks(dataset, ids, deleted))
