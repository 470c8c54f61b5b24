"""The interface every database provider implements, and the record they all store."""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, Self, TypeVar

from pydantic import BaseModel, Field
from pydantic_core import from_json, to_json

from nexpo_workflows.config import Settings

if TYPE_CHECKING:
    from nexpo_workflows.providers.sql import SQLProvider


class ProviderUnavailableError(Exception):
    """The backend cannot be reached or answered with a transient error; retrying may help."""


class DuplicateEmailError(Exception):
    """Another user (another id) already has this email; retrying cannot help."""


class InvalidRecordError(Exception):
    """The database refused the record's content (a character it cannot store, a value too
    long or too large, a field name it forbids): the caller's input, so retrying cannot help."""


class UserRecord(BaseModel):
    """The same fields in every provider: the saga writes this record everywhere."""

    id: str = Field(min_length=1, max_length=64)
    email: str = Field(min_length=3, max_length=320)
    name: str = Field(min_length=1, max_length=200)
    # An Argon2id hash, never a password; kept out of reprs so it does not reach logs.
    password_hash: str = Field(min_length=1, max_length=512, repr=False)
    created_at: datetime
    profile: dict[str, Any] | None = None


# Every provider keeps records of every dataset in one table/collection/container of this name
# (SQL table, MongoDB collection, Cosmos DB container partitioned by dataset, Supabase table),
# so a new dataset needs no migration.
RECORDS_STORE = "nexpo_records"

T = TypeVar("T")


def chunked(items: Sequence[T], size: int) -> list[Sequence[T]]:
    """``items`` in consecutive slices of at most ``size``: the ids of one IN list or query."""
    return [items[start : start + size] for start in range(0, len(items), size)]


class DatasetRecord(BaseModel):
    """One row of a dataset as every provider stores it: published content, a synced row,
    a quarantined row. ``version`` orders the writes of one id (microseconds since the epoch of
    the source's updated_at); ``deleted`` is a tombstone, so a delete reaches every copy."""

    id: str = Field(min_length=1, max_length=200)
    version: int = Field(ge=0)
    deleted: bool = False
    data: dict[str, Any] = Field(default_factory=dict)


class RecordVersion(BaseModel):
    """What verification compares: the id, its version and whether it is a tombstone."""

    id: str
    version: int
    deleted: bool


def row_hash(record_id: str, version: int, deleted: bool) -> int:
    """A 48-bit hash of what verification compares (id, version, tombstone): the first 6 bytes
    of its MD5, which PostgreSQL computes too, so a range's sum is taken in the database. 48
    bits keep a sum of millions of them inside a signed 64-bit integer."""
    digest = hashlib.md5(f"{record_id}:{version}:{int(deleted)}".encode(), usedforsecurity=False)
    return int.from_bytes(digest.digest()[:6], "big")


@dataclass(slots=True)
class RecordBatch:
    """Records of one dataset as columns (one list per field, the same length): what a bulk
    write takes without a model per row. ``data`` holds JSON-ready values."""

    ids: list[str] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)
    deleted: list[bool] = field(default_factory=list)
    # Empty where only the JSON text was handed over (``values`` parses it on demand).
    data: list[dict[str, Any]] = field(default_factory=list)
    # ``row_hash`` of each record and its data as JSON text, once computed (``hashes``,
    # ``json_data``); the columns are not changed after.
    computed_hashes: list[int] | None = None
    computed_json: list[str] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def hashes(self) -> list[int]:
        """``row_hash`` of each record, computed once."""
        if self.computed_hashes is None or len(self.computed_hashes) != len(self.ids):
            rows = zip(self.ids, self.versions, self.deleted, strict=True)
            self.computed_hashes = [row_hash(*row) for row in rows]
        return self.computed_hashes

    def json_data(self) -> list[str]:
        """Each record's data as JSON text (pydantic-core's encoder), computed once."""
        if self.computed_json is None or len(self.computed_json) != len(self.ids):
            self.computed_json = [to_json(value).decode() for value in self.values()]
        return self.computed_json

    def values(self) -> list[dict[str, Any]]:
        """Each record's data as JSON values: ``data``, or parsed from the JSON text once."""
        if len(self.data) != len(self.ids):
            assert self.computed_json is not None, "a batch needs its data or their JSON text"
            self.data = [from_json(text) for text in self.computed_json]
        return self.data

    def records(self) -> list[DatasetRecord]:
        return [
            DatasetRecord(id=i, version=v, deleted=d, data=data)
            for i, v, d, data in zip(
                self.ids, self.versions, self.deleted, self.values(), strict=True
            )
        ]


@dataclass(frozen=True, slots=True)
class KeysChecksum:
    """What a database holds of a set of keys: how many, and the sum of their ``row_hash``."""

    count: int
    total: int


def keys_checksum(versions: Sequence[RecordVersion]) -> KeysChecksum:
    return KeysChecksum(len(versions), sum(row_hash(v.id, v.version, v.deleted) for v in versions))


class DatabaseProvider(ABC):
    """A database the workflows write to: one implementation module per backend.

    Every write is idempotent on the record's id, so an activity retried after a timeout
    (which may have written) converges on the same state.
    """

    name: ClassVar[str]

    @classmethod
    @abstractmethod
    def from_settings(cls, settings: Settings) -> Self:
        """Build an unconnected instance from the provider's variables in the settings."""

    @abstractmethod
    async def connect(self) -> None:
        """Open connections and create the schema if it is missing (idempotent)."""

    @abstractmethod
    async def close(self) -> None:
        """Release connections; safe to call twice."""

    @abstractmethod
    async def ping(self) -> None:
        """One cheap round trip; raises ProviderUnavailableError when the backend is down."""

    @abstractmethod
    async def create_user(self, user: UserRecord) -> None:
        """Insert ``user``. Succeeds if a record with this id is already there;
        raises DuplicateEmailError if a record with another id has the same email."""

    @abstractmethod
    async def get_user(self, user_id: str) -> UserRecord | None:
        """The record with this id, or None."""

    @abstractmethod
    async def delete_user(self, user_id: str) -> bool:
        """Remove the record with this id; True if one was there. Absent is not an error."""

    @abstractmethod
    async def set_password_hash(self, user_id: str, password_hash: str) -> bool:
        """Replace the password hash of the record with this id (a rehash with new
        parameters); True if one was there. Absent is not an error."""

    def sql_source(self) -> SQLProvider | None:
        """The SQL provider behind this one, which sync can read a table of; None if none."""
        return None

    # --- Dataset records (published content, sync targets, quarantine) -----------------------

    @abstractmethod
    async def upsert_records(self, dataset: str, records: Sequence[DatasetRecord]) -> None:
        """Write ``records`` of ``dataset`` in as few round trips as the client allows,
        replacing any stored record with the same id. Replaying the same records changes
        nothing; an empty sequence is a no-op."""

    @abstractmethod
    async def get_records(self, dataset: str, ids: Sequence[str]) -> list[DatasetRecord]:
        """The stored records among ``ids`` (tombstones included), in any order."""

    @abstractmethod
    async def record_versions(self, dataset: str, ids: Sequence[str]) -> list[RecordVersion]:
        """Id, version and tombstone flag of the stored records among ``ids``: what
        verification compares, without reading the data."""

    async def upsert_batch(self, dataset: str, batch: RecordBatch) -> None:
        """``upsert_records`` of a batch held as columns; engines with a faster bulk path
        (a staging table, unordered inserts) write the columns without a model per row."""
        await self.upsert_records(dataset, batch.records())

    async def checksums(
        self, dataset: str, key_sets: Sequence[Sequence[str]]
    ) -> list[KeysChecksum]:
        """For each set of ids, the count and ``row_hash`` sum of the stored records among
        them. Engines that can compute the hash (or keep it) sum it in the database, so only
        two numbers per set travel; this fallback reads the versions."""
        return [keys_checksum(await self.record_versions(dataset, keys)) for keys in key_sets]

    @abstractmethod
    async def delete_records(self, dataset: str, ids: Sequence[str]) -> int:
        """Remove the records (not a tombstone: a compensation); how many were there.
        Absent ids are not an error."""
