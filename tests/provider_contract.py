"""The behaviour every database provider must have, run against each real server.

A provider's test module subclasses ``ProviderContract`` and supplies two fixtures:
``provider`` (connected, against a real server, empty users store) and
``unreachable_provider`` (configured for an address where nothing listens).
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import pytest

from nexpo_workflows.providers import (
    DatabaseProvider,
    DatasetRecord,
    DuplicateEmailError,
    ProviderUnavailableError,
    RecordVersion,
    UserRecord,
)
from nexpo_workflows.providers.base import KeysChecksum, RecordBatch, keys_checksum


def make_user(**overrides: object) -> UserRecord:
    unique = uuid.uuid4().hex
    values: dict[str, object] = {
        "id": str(uuid.uuid4()),
        "email": f"user-{unique}@example.com",
        "name": "Ada Lovelace",
        "password_hash": "$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA",
        # Millisecond precision: the coarsest that every provider stores.
        "created_at": datetime.now(UTC).replace(microsecond=123000),
        "profile": {"plan": "pro", "tags": ["a", "b"], "limits": {"seats": 3}},
    }
    values.update(overrides)
    return UserRecord.model_validate(values)


def as_batch(written: list[DatasetRecord]) -> RecordBatch:
    """Records as the columns a bulk write takes."""
    return RecordBatch(
        ids=[r.id for r in written],
        versions=[r.version for r in written],
        deleted=[r.deleted for r in written],
        data=[r.data for r in written],
    )


def versions_of(written: list[DatasetRecord]) -> list[RecordVersion]:
    return [RecordVersion(id=r.id, version=r.version, deleted=r.deleted) for r in written]


def make_records(count: int, version: int = 1_700_000_000_000_000) -> list[DatasetRecord]:
    return [
        DatasetRecord(
            id=f"row-{uuid.uuid4().hex[:12]}-{n}",
            version=version + n,
            data={"title": f"Title {n}", "n": n, "tags": ["x", "y"], "nested": {"ok": True}},
        )
        for n in range(count)
    ]


def by_id(records: list[DatasetRecord]) -> dict[str, DatasetRecord]:
    return {record.id: record for record in records}


class ProviderContract:
    async def test_ping(self, provider: DatabaseProvider) -> None:
        await provider.ping()

    async def test_create_then_get_returns_the_same_record(
        self, provider: DatabaseProvider
    ) -> None:
        user = make_user()
        await provider.create_user(user)
        assert await provider.get_user(user.id) == user

    async def test_a_record_without_profile_round_trips(self, provider: DatabaseProvider) -> None:
        user = make_user(profile=None)
        await provider.create_user(user)
        assert await provider.get_user(user.id) == user

    async def test_creating_the_same_record_again_succeeds(
        self, provider: DatabaseProvider
    ) -> None:
        user = make_user()
        await provider.create_user(user)
        await provider.create_user(user)
        await asyncio.gather(provider.create_user(user), provider.create_user(user))
        assert await provider.get_user(user.id) == user

    async def test_another_id_with_the_same_email_is_a_duplicate(
        self, provider: DatabaseProvider
    ) -> None:
        first = make_user()
        await provider.create_user(first)
        second = make_user(email=first.email)
        with pytest.raises(DuplicateEmailError):
            await provider.create_user(second)
        assert await provider.get_user(second.id) is None
        assert await provider.get_user(first.id) == first

    async def test_delete_is_idempotent(self, provider: DatabaseProvider) -> None:
        user = make_user()
        await provider.create_user(user)
        assert await provider.delete_user(user.id) is True
        assert await provider.get_user(user.id) is None
        assert await provider.delete_user(user.id) is False

    async def test_deleting_a_user_that_never_existed_is_not_an_error(
        self, provider: DatabaseProvider
    ) -> None:
        assert await provider.delete_user(str(uuid.uuid4())) is False

    async def test_a_password_hash_is_replaced_and_the_rest_kept(
        self, provider: DatabaseProvider
    ) -> None:
        user = make_user()
        await provider.create_user(user)
        rehashed = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA"
        assert await provider.set_password_hash(user.id, rehashed)
        assert await provider.get_user(user.id) == user.model_copy(
            update={"password_hash": rehashed}
        )
        assert not await provider.set_password_hash(str(uuid.uuid4()), rehashed)

    async def test_email_is_free_again_after_delete(self, provider: DatabaseProvider) -> None:
        user = make_user()
        await provider.create_user(user)
        await provider.delete_user(user.id)
        again = make_user(email=user.email)
        await provider.create_user(again)
        assert await provider.get_user(again.id) == again

    async def test_connect_and_close_are_idempotent(self, provider: DatabaseProvider) -> None:
        await provider.connect()
        await provider.connect()
        await provider.ping()

    async def test_upserted_records_read_back_equal(self, provider: DatabaseProvider) -> None:
        dataset = f"ds_{uuid.uuid4().hex[:8]}"
        written = make_records(250)
        await provider.upsert_records(dataset, written)
        ids = [record.id for record in written]
        assert by_id(await provider.get_records(dataset, ids)) == by_id(written)
        versions = await provider.record_versions(dataset, [*ids, "absent"])
        assert sorted(versions, key=lambda v: v.id) == sorted(
            (RecordVersion(id=r.id, version=r.version, deleted=False) for r in written),
            key=lambda v: v.id,
        )

    async def test_replaying_an_upsert_changes_nothing_and_a_newer_one_replaces(
        self, provider: DatabaseProvider
    ) -> None:
        dataset = f"ds_{uuid.uuid4().hex[:8]}"
        written = make_records(5)
        await provider.upsert_records(dataset, written)
        await provider.upsert_records(dataset, written)
        tombstone = written[0].model_copy(update={"version": written[0].version + 10})
        tombstone.deleted, tombstone.data = True, {}
        changed = written[1].model_copy(update={"data": {"title": "changed"}, "version": 9})
        await provider.upsert_records(dataset, [tombstone, changed])
        stored = by_id(await provider.get_records(dataset, [r.id for r in written]))
        assert stored == by_id([tombstone, changed, *written[2:]])
        await provider.upsert_records(dataset, [])

    async def test_a_batch_of_columns_upserts_and_its_checksums_match_the_records(
        self, provider: DatabaseProvider
    ) -> None:
        dataset = f"ds_{uuid.uuid4().hex[:8]}"
        written = make_records(300)
        written[5] = written[5].model_copy(update={"deleted": True, "data": {}})
        batch = as_batch(written)
        await provider.upsert_batch(dataset, batch)
        await provider.upsert_batch(dataset, batch)  # a replay, onto rows already there
        ids = batch.ids
        assert by_id(await provider.get_records(dataset, ids)) == by_id(written)
        versions = versions_of(written)
        halves = [ids[:150], [*ids[150:], "absent"]]
        assert await provider.checksums(dataset, halves) == [
            keys_checksum(versions[:150]),
            keys_checksum(versions[150:]),
        ]
        # More sets than a call spreads over connections or requests: each answer in its place.
        bounds = [(0, 1), (1, 3), (3, 6), (6, 10), (10, 15)]
        assert await provider.checksums(dataset, [ids[a:b] for a, b in bounds]) == [
            keys_checksum(versions[a:b]) for a, b in bounds
        ]
        # A newer version of one row (written as records) and a row gone: both sets differ.
        newer = written[0].model_copy(update={"version": written[0].version + 1})
        await provider.upsert_records(dataset, [newer])
        await provider.delete_records(dataset, [ids[299]])
        first, second = await provider.checksums(dataset, halves)
        assert first != keys_checksum(versions[:150])
        assert first.count == 150
        assert second == keys_checksum(versions[150:299])
        assert await provider.checksums(dataset, [["absent"]]) == [KeysChecksum(0, 0)]

    async def test_datasets_do_not_see_each_other(self, provider: DatabaseProvider) -> None:
        first, second = f"ds_{uuid.uuid4().hex[:8]}", f"ds_{uuid.uuid4().hex[:8]}"
        written = make_records(3)
        await provider.upsert_records(first, written)
        assert await provider.get_records(second, [r.id for r in written]) == []
        assert await provider.delete_records(second, [r.id for r in written]) == 0
        assert len(await provider.get_records(first, [r.id for r in written])) == 3

    async def test_delete_records_is_idempotent(self, provider: DatabaseProvider) -> None:
        dataset = f"ds_{uuid.uuid4().hex[:8]}"
        written = make_records(4)
        await provider.upsert_records(dataset, written)
        ids = [r.id for r in written]
        assert await provider.delete_records(dataset, [*ids[:2], "absent"]) == 2
        assert await provider.delete_records(dataset, ids[:2]) == 0
        assert by_id(await provider.get_records(dataset, ids)) == by_id(written[2:])

    async def test_record_ids_with_reserved_characters_round_trip(
        self, provider: DatabaseProvider
    ) -> None:
        dataset = f"ds_{uuid.uuid4().hex[:8]}"
        # Separators and quotes of filter syntaxes, URL syntax, what Cosmos item ids refuse.
        ids = ["a,b", "c(d)", 'e"f', "g\\h", "i/j", "k?l#m", "n.o:p", "q r%20s", "ü-ß"]
        written = [
            DatasetRecord(id=record_id, version=1, data={"id": record_id}) for record_id in ids
        ]
        await provider.upsert_records(dataset, written)
        assert by_id(await provider.get_records(dataset, ids)) == by_id(written)
        assert await provider.delete_records(dataset, ids) == len(ids)

    async def test_an_unreachable_backend_is_a_retryable_error(
        self, unreachable_provider: DatabaseProvider
    ) -> None:
        with pytest.raises(ProviderUnavailableError):
            await unreachable_provider.ping()
        with pytest.raises(ProviderUnavailableError):
            await unreachable_provider.create_user(make_user())
        with pytest.raises(ProviderUnavailableError):
            await unreachable_provider.delete_user(str(uuid.uuid4()))
        with pytest.raises(ProviderUnavailableError):
            await unreachable_provider.upsert_records("ds", make_records(1))
        with pytest.raises(ProviderUnavailableError):
            await unreachable_provider.record_versions("ds", ["a"])
        await unreachable_provider.close()
