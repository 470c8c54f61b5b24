"""An in-memory provider, for the benchmark only: it isolates what the saga's orchestration
costs from what the database clients and servers cost on the same two cores."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Self

from nexpo_workflows.config import Settings
from nexpo_workflows.providers import (
    DatabaseProvider,
    DatasetRecord,
    DuplicateEmailError,
    RecordVersion,
    UserRecord,
)


class MemoryProvider(DatabaseProvider):
    name: ClassVar[str] = "memory"

    def __init__(self) -> None:
        self.users: dict[str, UserRecord] = {}
        self.records: dict[tuple[str, str], DatasetRecord] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        return cls()

    async def connect(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def ping(self) -> None:
        return None

    async def create_user(self, user: UserRecord) -> None:
        if user.id in self.users:
            return
        if any(existing.email == user.email for existing in self.users.values()):
            raise DuplicateEmailError(f"memory: a user with email {user.email} exists")
        self.users[user.id] = user

    async def get_user(self, user_id: str) -> UserRecord | None:
        return self.users.get(user_id)

    async def delete_user(self, user_id: str) -> bool:
        return self.users.pop(user_id, None) is not None

    async def set_password_hash(self, user_id: str, password_hash: str) -> bool:
        user = self.users.get(user_id)
        if user is None:
            return False
        self.users[user_id] = user.model_copy(update={"password_hash": password_hash})
        return True

    async def upsert_records(self, dataset: str, records: Sequence[DatasetRecord]) -> None:
        # Copies: a caller changing its records afterwards must not change what is stored.
        self.records.update(
            {(dataset, record.id): record.model_copy(deep=True) for record in records}
        )

    async def get_records(self, dataset: str, ids: Sequence[str]) -> list[DatasetRecord]:
        stored = (self.records.get((dataset, record_id)) for record_id in dict.fromkeys(ids))
        return [record.model_copy(deep=True) for record in stored if record is not None]

    async def record_versions(self, dataset: str, ids: Sequence[str]) -> list[RecordVersion]:
        return [
            RecordVersion(id=record.id, version=record.version, deleted=record.deleted)
            for record in await self.get_records(dataset, ids)
        ]

    async def delete_records(self, dataset: str, ids: Sequence[str]) -> int:
        removed = (self.records.pop((dataset, record_id), None) for record_id in set(ids))
        return sum(record is not None for record in removed)
