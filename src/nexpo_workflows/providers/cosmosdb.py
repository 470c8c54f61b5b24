"""Azure Cosmos DB (NoSQL API) through the asynchronous ``azure-cosmos`` client.

Email uniqueness: a unique key policy is enforced only inside one logical partition, and
partitioning users by email would make every read by id a cross-partition query. So one
container, partitioned by ``/pk``, holds two kinds of item:

- the user, ``id`` = user id, ``pk`` = ``user:<id>`` (read and deleted by id);
- an email claim, ``id`` = SHA-256 of the lower-cased email (ids are limited to 255
  characters and may not contain ``/``, ``?`` or ``#``, which emails may), ``pk`` =
  ``email:<that hash>``, holding the id of the user who owns the email. Creating an item
  whose id exists in its partition fails with 409, which makes the claim atomic.

A transactional batch cannot span the two partitions, so the writes are ordered so that
every interrupted sequence is either repaired by a retry or detectably stale:

- create writes the user, then claims the email; if another user holds it, it removes
  its own user again and reports a duplicate. A crash in between leaves a user without a
  claim, which the retried create completes or the compensating delete removes.
- delete releases the claim (only if it is still this user's, checked by etag), then
  removes the user; a crash in between leaves a user without a claim, as above.

Hence a claim whose owner has no user with that email can only be left by a delete that
ran while a create of the same id was between its two writes; such a claim is stale and
the next claimant releases it. Its etag guards that release, and a create that finds its
own claim rewrites it, so a claim read while its owner's user was missing cannot be
released once the owner has relied on it.

Items are read with single-partition queries, not point reads: a point read of a missing
item answers 500 instead of 404 on the local emulator the tests run against, and a query
filtered on ``pk`` and ``id`` reads the same single item on Cosmos DB.

Dataset records live in a second container, ``nexpo_records``, partitioned by ``/dataset``:
each call touches one dataset, so every query and write stays in one partition. The record id
is kept in ``rid``; it is the item id too, unless Cosmos cannot store it (see
``record_item_id``). Writes are concurrent single-item requests, a bounded number at a time:
the transactional batch API (up to 100 operations of one partition per request) is what a
real account would take, but the emulator the tests run against fails every batch the Python
SDK sends (it expects a partition key on each operation, which only the JavaScript SDK adds),
and a write path never run against a server is not one to ship.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from datetime import UTC
from typing import Any, ClassVar, Self, TypeVar

import aiohttp
from azure.core import MatchConditions
from azure.core.exceptions import ServiceRequestError, ServiceResponseError
from azure.cosmos import PartitionKey
from azure.cosmos.aio import ContainerProxy, CosmosClient
from azure.cosmos.exceptions import (
    CosmosAccessConditionFailedError,
    CosmosClientTimeoutError,
    CosmosHttpResponseError,
    CosmosResourceExistsError,
    CosmosResourceNotFoundError,
)
from pydantic import SecretStr

from nexpo_workflows.config import Settings
from nexpo_workflows.errors import first_line
from nexpo_workflows.providers.base import (
    RECORDS_STORE,
    DatabaseProvider,
    DatasetRecord,
    DuplicateEmailError,
    InvalidRecordError,
    ProviderUnavailableError,
    RecordVersion,
    UserRecord,
    chunked,
)

Item = dict[str, Any]
T = TypeVar("T")
U = TypeVar("U")

PARTITION_KEY_PATH = "/pk"
USER_KIND = "user"
EMAIL_CLAIM_KIND = "email-claim"
# Cosmos DB refuses these in an item id; the user id is the item id, so it is checked
# before writing rather than answered with an opaque 400.
FORBIDDEN_ID_CHARACTERS = frozenset("/\\?#")
# Each turn means another writer changed the claim between our read and our write; a
# few in a row is contention that a later retry of the whole step resolves.
CLAIM_ATTEMPTS = 5

RECORDS_PARTITION_KEY_PATH = "/dataset"
# Marks an item id derived from a record id Cosmos cannot store (see ``record_item_id``).
HASHED_ID_PREFIX = "sha256~"
# Requests in flight per call: enough to hide the round trips of thousands of single-item
# writes, few enough not to be throttled (429) on a modest provisioned throughput.
RECORD_WRITE_CONCURRENCY = 32
# Ids per ARRAY_CONTAINS parameter: even at 200 characters each, far below the 512 KB
# limit on a query with its parameters.
QUERY_IDS_CHUNK = 1000
RECORD_QUERY = (
    "SELECT c.rid AS id, c.version, c.deleted{fields} FROM c "
    "WHERE c.dataset = @dataset AND ARRAY_CONTAINS(@ids, c.rid)"
)

# The SDK wraps transport failures in ServiceRequestError/ServiceResponseError; the others
# are what may still escape it (and CosmosClientTimeoutError, its overall deadline).
UNAVAILABLE = (
    ServiceRequestError,
    ServiceResponseError,
    CosmosClientTimeoutError,
    aiohttp.ClientError,
    OSError,
    TimeoutError,
)
# Timeout, gone (a moved partition), throttled, and "retry with" are transient by design.
TRANSIENT_STATUSES = frozenset({408, 410, 429, 449})
# Bad request (an item Cosmos cannot store) and request entity too large (over 2 MB): the
# record is refused, and retrying it cannot help.
REFUSED_STATUSES = frozenset({400, 413})


def user_partition(user_id: str) -> str:
    return f"user:{user_id}"


def email_key(email: str) -> str:
    return hashlib.sha256(email.lower().encode()).hexdigest()


def email_partition(key: str) -> str:
    return f"email:{key}"


def user_item(user: UserRecord) -> Item:
    created_at = user.created_at
    if created_at.tzinfo is None:  # the other providers read a naive time as UTC too
        created_at = created_at.replace(tzinfo=UTC)
    return {
        "id": user.id,
        "pk": user_partition(user.id),
        "kind": USER_KIND,
        "email": user.email,
        "name": user.name,
        "password_hash": user.password_hash,
        "created_at": created_at.astimezone(UTC).isoformat(),
        "profile": user.profile,
    }


def user_record(item: Item) -> UserRecord:
    """Only the record's fields: drops ``pk``, ``kind`` and Cosmos's ``_rid``, ``_etag``..."""
    return UserRecord.model_validate({field: item.get(field) for field in UserRecord.model_fields})


def record_item_id(record_id: str) -> str:
    """The item id of a record: the record id itself, or where Cosmos refuses it (one of
    ``/ \\ ? #``) a prefixed SHA-256 of it. Record ids that begin with the prefix are hashed
    too, so two record ids never share an item id."""
    if FORBIDDEN_ID_CHARACTERS.intersection(record_id) or record_id.startswith(HASHED_ID_PREFIX):
        return HASHED_ID_PREFIX + hashlib.sha256(record_id.encode()).hexdigest()
    return record_id


def record_item(dataset: str, record: DatasetRecord) -> Item:
    return {
        "id": record_item_id(record.id),
        "dataset": dataset,
        "rid": record.id,
        # Microseconds since the epoch, a JSON number, which Cosmos keeps as a double:
        # exact up to 2**53, that is until the year 2255.
        "version": record.version,
        "deleted": record.deleted,
        "data": record.data,
    }


async def concurrently(function: Callable[[T], Awaitable[U]], items: Iterable[T]) -> list[U]:
    """``function`` applied to every item, ``RECORD_WRITE_CONCURRENCY`` at a time. The first
    failure cancels the rest and is raised as itself, not in an ExceptionGroup, so that the
    caller maps it like the error of a single request."""
    gate = asyncio.Semaphore(RECORD_WRITE_CONCURRENCY)

    async def one(item: T) -> U:
        async with gate:
            return await function(item)

    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(one(item)) for item in items]
    except ExceptionGroup as failures:
        raise failures.exceptions[0] from None
    return [task.result() for task in tasks]


class CosmosProvider(DatabaseProvider):
    name: ClassVar[str] = "cosmosdb"

    def __init__(
        self,
        endpoint: str,
        key: SecretStr,
        database: str,
        container: str,
        *,
        verify_tls: bool = True,
        **client_options: Any,
    ) -> None:
        """``client_options`` go to ``CosmosClient`` (timeouts, retries)."""
        self.endpoint = endpoint
        self._key = key
        self.database = database
        self.container = container
        self.verify_tls = verify_tls
        self._client_options = client_options
        self._client: CosmosClient | None = None
        self._container: ContainerProxy | None = None
        self._records: ContainerProxy | None = None
        # Concurrent first calls would otherwise each build a client and leak all but one.
        self._connecting = asyncio.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        return cls(
            settings.cosmosdb_endpoint,
            settings.cosmosdb_key,
            settings.cosmosdb_database,
            settings.cosmosdb_container,
            verify_tls=settings.cosmosdb_verify_tls,
        )

    async def connect(self) -> None:
        async with self._connecting:
            if self._container is not None:
                return
            client = CosmosClient(
                self.endpoint,
                credential=self._key.get_secret_value(),
                connection_verify=self.verify_tls,
                **self._client_options,
            )
            try:
                with self._classifying_errors():
                    database = await client.create_database_if_not_exists(self.database)
                    container = await database.create_container_if_not_exists(
                        self.container, partition_key=PartitionKey(path=PARTITION_KEY_PATH)
                    )
                    records = await database.create_container_if_not_exists(
                        RECORDS_STORE, partition_key=PartitionKey(path=RECORDS_PARTITION_KEY_PATH)
                    )
            except BaseException:
                await client.close()
                raise
            self._client, self._container, self._records = client, container, records

    async def close(self) -> None:
        if self._client is not None:
            client, self._client, self._container, self._records = self._client, None, None, None
            await client.close()

    async def _ready_container(self) -> ContainerProxy:
        await self.connect()
        assert self._container is not None
        return self._container

    async def _ready_records(self) -> ContainerProxy:
        await self.connect()
        assert self._records is not None
        return self._records

    def _unavailable(self, error: BaseException) -> ProviderUnavailableError:
        return ProviderUnavailableError(f"{self.name}: {first_line(error)}")

    @contextlib.contextmanager
    def _classifying_errors(self) -> Iterator[None]:
        try:
            yield
        except UNAVAILABLE as error:
            raise self._unavailable(error) from error
        except CosmosHttpResponseError as error:
            status = error.status_code or 0
            if status >= 500 or status in TRANSIENT_STATUSES:
                raise self._unavailable(error) from error
            if status in REFUSED_STATUSES:
                raise InvalidRecordError(f"{self.name}: {first_line(error)}") from error
            raise

    async def ping(self) -> None:
        container = await self._ready_container()
        with self._classifying_errors():
            await container.read()

    async def create_user(self, user: UserRecord) -> None:
        if FORBIDDEN_ID_CHARACTERS.intersection(user.id):
            raise InvalidRecordError(f"{self.name}: a user id cannot contain / \\ ? or #")
        container = await self._ready_container()
        with self._classifying_errors():
            stored = await self._create_or_read_user(container, user)
            if await self._claim_email(container, stored):
                return
            # Ours only until the claim failed: leaving it would show a user get_user
            # returns although its creation was refused.
            with contextlib.suppress(CosmosResourceNotFoundError):
                await container.delete_item(stored.id, partition_key=user_partition(stored.id))
        raise DuplicateEmailError(f"{self.name}: a user with email {user.email} exists")

    async def _create_or_read_user(self, container: ContainerProxy, user: UserRecord) -> UserRecord:
        """The user now stored under this id: ``user``, or the one a previous attempt wrote."""
        try:
            await container.create_item(user_item(user))
            return user
        except CosmosResourceExistsError:
            pass
        stored = await self._read(container, user_partition(user.id), user.id)
        if stored is None:
            raise ProviderUnavailableError(
                f"{self.name}: user {user.id} was deleted while being created; retry"
            )
        return user_record(stored)

    async def _claim_email(self, container: ContainerProxy, user: UserRecord) -> bool:
        """Make ``user`` the owner of its email; False if another user owns it."""
        key = email_key(user.email)
        partition = email_partition(key)
        claim = {"id": key, "pk": partition, "kind": EMAIL_CLAIM_KIND, "user_id": user.id}
        for _ in range(CLAIM_ATTEMPTS):
            try:
                await container.create_item(claim)
                return True
            except CosmosResourceExistsError:
                pass
            held = await self._read(container, partition, key)
            if held is None:
                continue  # released since our attempt
            try:
                if held["user_id"] == user.id:
                    # A new etag: a claimant that saw this claim while our user was
                    # missing (a stale claim, then) can no longer release it.
                    await container.replace_item(
                        key,
                        claim,
                        etag=held["_etag"],
                        match_condition=MatchConditions.IfNotModified,
                    )
                    return True
                owner = await self._read(
                    container, user_partition(held["user_id"]), held["user_id"]
                )
                if owner is not None and email_key(owner["email"]) == key:
                    return False
                await container.delete_item(
                    key,
                    partition_key=partition,
                    etag=held["_etag"],
                    match_condition=MatchConditions.IfNotModified,
                )
            except (CosmosAccessConditionFailedError, CosmosResourceNotFoundError):
                pass  # the claim changed after we read it: look again
        raise ProviderUnavailableError(
            f"{self.name}: the email claim of user {user.id} kept changing; retry"
        )

    async def _release_email(self, container: ContainerProxy, user_id: str, email: str) -> None:
        """Delete the claim on ``email`` if ``user_id`` owns it; another owner's stays."""
        key = email_key(email)
        partition = email_partition(key)
        for _ in range(CLAIM_ATTEMPTS):
            held = await self._read(container, partition, key)
            if held is None or held["user_id"] != user_id:
                return
            try:
                # Between our read and this delete the claim may have been released and
                # taken by another user: the etag keeps us from deleting theirs.
                await container.delete_item(
                    key,
                    partition_key=partition,
                    etag=held["_etag"],
                    match_condition=MatchConditions.IfNotModified,
                )
                return
            except CosmosResourceNotFoundError:
                return
            except CosmosAccessConditionFailedError:
                pass  # rewritten by a concurrent create of this user: read it again
        raise ProviderUnavailableError(
            f"{self.name}: the email claim of user {user_id} kept changing; retry"
        )

    @staticmethod
    async def _read(container: ContainerProxy, partition: str, item_id: str) -> Item | None:
        items = container.query_items(
            "SELECT * FROM c WHERE c.pk = @pk AND c.id = @id",
            parameters=[{"name": "@pk", "value": partition}, {"name": "@id", "value": item_id}],
            partition_key=partition,
        )
        async for item in items:
            return item
        return None

    async def get_user(self, user_id: str) -> UserRecord | None:
        container = await self._ready_container()
        with self._classifying_errors():
            item = await self._read(container, user_partition(user_id), user_id)
        return None if item is None else user_record(item)

    async def delete_user(self, user_id: str) -> bool:
        container = await self._ready_container()
        with self._classifying_errors():
            item = await self._read(container, user_partition(user_id), user_id)
            if item is None:
                return False
            await self._release_email(container, user_id, item["email"])
            try:
                await container.delete_item(user_id, partition_key=user_partition(user_id))
            except CosmosResourceNotFoundError:
                return False  # a concurrent delete removed it first
        return True

    async def set_password_hash(self, user_id: str, password_hash: str) -> bool:
        container = await self._ready_container()
        with self._classifying_errors():
            item = await self._read(container, user_partition(user_id), user_id)
            if item is None:
                return False
            user = user_record(item).model_copy(update={"password_hash": password_hash})
            try:
                await container.replace_item(user_id, user_item(user))
            except CosmosResourceNotFoundError:
                return False  # a concurrent delete removed it first
        return True

    async def upsert_records(self, dataset: str, records: Sequence[DatasetRecord]) -> None:
        if not records:
            return
        container = await self._ready_records()

        async def upsert(record: DatasetRecord) -> None:
            await container.upsert_item(record_item(dataset, record))

        with self._classifying_errors():
            await concurrently(upsert, records)

    async def _query_records(self, dataset: str, ids: Sequence[str], fields: str) -> list[Item]:
        container = await self._ready_records()
        found: list[Item] = []
        with self._classifying_errors():
            for chunk in chunked(ids, QUERY_IDS_CHUNK):
                items = container.query_items(
                    RECORD_QUERY.format(fields=fields),
                    parameters=[
                        {"name": "@dataset", "value": dataset},
                        {"name": "@ids", "value": list(chunk)},
                    ],
                    partition_key=dataset,
                )
                found += [item async for item in items]
        return found

    async def get_records(self, dataset: str, ids: Sequence[str]) -> list[DatasetRecord]:
        items = await self._query_records(dataset, ids, ", c.data")
        return [DatasetRecord.model_validate(item) for item in items]

    async def record_versions(self, dataset: str, ids: Sequence[str]) -> list[RecordVersion]:
        items = await self._query_records(dataset, ids, "")
        return [RecordVersion.model_validate(item) for item in items]

    async def delete_records(self, dataset: str, ids: Sequence[str]) -> int:
        container = await self._ready_records()

        async def delete(record_id: str) -> int:
            try:
                await container.delete_item(record_item_id(record_id), partition_key=dataset)
            except CosmosResourceNotFoundError:
                return 0
            return 1

        with self._classifying_errors():
            return sum(await concurrently(delete, ids))
