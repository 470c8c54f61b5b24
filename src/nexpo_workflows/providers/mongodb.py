"""MongoDB through PyMongo's native asyncio client.

A user is one document in ``users``: ``_id`` is the user id, so the primary key makes
creation idempotent, and a unique index on ``email`` rejects another id with the same email.
"""

from __future__ import annotations

import asyncio
from datetime import UTC
from typing import Any, ClassVar, Self

from pymongo import AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import ConnectionFailure, DuplicateKeyError

from nexpo_workflows.config import Settings
from nexpo_workflows.providers.base import (
    DatabaseProvider,
    DuplicateEmailError,
    ProviderUnavailableError,
    UserRecord,
)

Document = dict[str, Any]

COLLECTION = "users"

# ConnectionFailure is the base of AutoReconnect (and so of NotPrimaryError),
# NetworkTimeout and ServerSelectionTimeoutError: every "cannot talk to the server now".
UNAVAILABLE = (ConnectionFailure, OSError)


class MongoProvider(DatabaseProvider):
    name: ClassVar[str] = "mongodb"

    def __init__(self, url: str, database: str, *, server_selection_timeout_ms: int = 5000) -> None:
        # Private and never formatted into a message: the URL may carry a password.
        self._url = url
        self.database = database
        self.server_selection_timeout_ms = server_selection_timeout_ms
        self._client: AsyncMongoClient[Document] | None = None
        self._users: AsyncCollection[Document] | None = None
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

    async def close(self) -> None:
        if self._client is not None:
            client, self._client, self._users = self._client, None, None
            await client.close()

    async def _ready_users(self) -> AsyncCollection[Document]:
        await self.connect()
        assert self._users is not None
        return self._users

    def _unavailable(self, error: BaseException) -> ProviderUnavailableError:
        # PyMongo names hosts but never credentials; the topology dump after the first
        # sentence only makes the message unreadable in logs.
        detail = str(error).split(", Topology Description:")[0].strip() or type(error).__name__
        return ProviderUnavailableError(f"{self.name}: {detail}")

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
