"""Fault injection around a real provider: the database is real, only the timing of failures
is chosen by the test."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Literal, Self

from nexpo_workflows.config import Settings
from nexpo_workflows.providers import (
    DatabaseProvider,
    DatasetRecord,
    ProviderUnavailableError,
    RecordVersion,
    UserRecord,
)
from nexpo_workflows.providers.sql import SQLProvider


class InjectedFailure(ProviderUnavailableError):
    pass


class FaultyProvider(DatabaseProvider):
    """Delegates to ``inner``. ``create_user`` fails every time before or after the real
    write (``create_fails``), or only its first ``unavailable_for`` calls before the write,
    or its first ``lost_answers`` calls after the write (an answer lost on the way back);
    ``delete_user`` fails its first ``failing_deletes`` calls; ``upsert_records`` fails every
    time after the real write when ``upsert_fails`` is set, always before it once
    ``upsert_down`` is set (a target that went down), and silently drops its first
    ``lost_upserts`` writes (a target that lost them)."""

    def __init__(
        self,
        inner: DatabaseProvider,
        *,
        create_fails: Literal["before", "after"] | None = None,
        unavailable_for: int = 0,
        lost_answers: int = 0,
        failing_deletes: int = 0,
        create_delay: float = 0.0,
        upsert_fails: bool = False,
        lost_upserts: int = 0,
    ) -> None:
        self.inner = inner
        self.name = inner.name  # type: ignore[misc]
        self.create_fails = create_fails
        self.unavailable_for = unavailable_for
        self.lost_answers = lost_answers
        self.failing_deletes = failing_deletes
        self.create_delay = create_delay
        self.upsert_fails = upsert_fails
        self.lost_upserts = lost_upserts
        self.upsert_down = False
        self.upsert_calls = 0
        # The ids each records write was asked for, in order.
        self.upserted_ids: list[str] = []
        self.create_calls = 0
        self.delete_calls = 0
        self.create_started = asyncio.Event()

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        raise NotImplementedError("built by tests around a real provider")

    async def connect(self) -> None:
        await self.inner.connect()

    async def close(self) -> None:
        await self.inner.close()

    async def ping(self) -> None:
        await self.inner.ping()

    def sql_source(self) -> SQLProvider | None:
        return self.inner.sql_source()

    async def create_user(self, user: UserRecord) -> None:
        self.create_calls += 1
        self.create_started.set()
        if self.create_delay:
            await asyncio.sleep(self.create_delay)
        if self.create_calls <= self.unavailable_for:
            raise InjectedFailure(f"{self.name}: injected outage {self.create_calls}")
        if self.create_fails == "before":
            raise InjectedFailure(f"{self.name}: injected failure before the write")
        await self.inner.create_user(user)
        if self.create_fails == "after" or self.create_calls <= self.lost_answers:
            raise InjectedFailure(f"{self.name}: injected failure after the write")

    async def get_user(self, user_id: str) -> UserRecord | None:
        return await self.inner.get_user(user_id)

    async def delete_user(self, user_id: str) -> bool:
        self.delete_calls += 1
        if self.delete_calls <= self.failing_deletes:
            raise InjectedFailure(f"{self.name}: injected delete failure {self.delete_calls}")
        return await self.inner.delete_user(user_id)

    async def set_password_hash(self, user_id: str, password_hash: str) -> bool:
        return await self.inner.set_password_hash(user_id, password_hash)

    async def upsert_records(self, dataset: str, records: Sequence[DatasetRecord]) -> None:
        self.upsert_calls += 1
        self.upserted_ids.extend(record.id for record in records)
        if self.upsert_down:
            raise InjectedFailure(f"{self.name}: injected outage of the records store")
        if self.upsert_calls <= self.lost_upserts:
            return
        await self.inner.upsert_records(dataset, records)
        if self.upsert_fails:
            raise InjectedFailure(f"{self.name}: injected failure after the records write")

    async def get_records(self, dataset: str, ids: Sequence[str]) -> list[DatasetRecord]:
        return await self.inner.get_records(dataset, ids)

    async def record_versions(self, dataset: str, ids: Sequence[str]) -> list[RecordVersion]:
        return await self.inner.record_versions(dataset, ids)

    async def delete_records(self, dataset: str, ids: Sequence[str]) -> int:
        return await self.inner.delete_records(dataset, ids)
