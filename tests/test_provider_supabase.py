"""The Supabase provider against the real PostgREST binary on a real PostgreSQL database."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from postgrest import APIError
from pydantic import SecretStr

from nexpo_workflows.config import Settings
from nexpo_workflows.ports import free_port
from nexpo_workflows.providers import DatabaseProvider, DatasetRecord, ProviderUnavailableError
from nexpo_workflows.providers.base import KeysChecksum, RecordVersion, keys_checksum
from nexpo_workflows.providers.supabase import (
    CHECKSUMS_FUNCTION,
    SupabaseProvider,
    schema_sql,
    url_chunks,
)
from tests.provider_contract import (
    ProviderContract,
    as_batch,
    by_id,
    make_records,
    make_user,
    versions_of,
)
from tests.servers.supabase import SupabaseStack, make_jwt, running_supabase
from tests.sync_source import eventually


@pytest.fixture(scope="module")
async def supabase() -> AsyncIterator[SupabaseStack]:
    async with running_supabase() as stack:
        yield stack


async def migrated(stack: SupabaseStack, sql: str) -> None:
    """Run ``sql`` on the project's database and have PostgREST reload its schema."""
    connection = await asyncpg.connect(stack.database_url)
    try:
        await connection.execute(f"{sql}; NOTIFY pgrst, 'reload schema'")
    finally:
        await connection.close()


def settings_for(stack: SupabaseStack, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "enable_supabase": True,
        "supabase_url": stack.url,
        "supabase_service_role_key": stack.service_role_key,
        "supabase_table": stack.table,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


class TestSupabaseProvider(ProviderContract):
    @pytest.fixture
    async def provider(self, supabase: SupabaseStack) -> AsyncIterator[SupabaseProvider]:
        provider = SupabaseProvider.from_settings(settings_for(supabase))
        await provider.connect()
        yield provider
        await provider.close()

    @pytest.fixture
    def unreachable_provider(self) -> DatabaseProvider:
        return SupabaseProvider(
            f"http://127.0.0.1:{free_port()}",
            SecretStr(make_jwt("x" * 32, {"role": "service_role"})),
            "nexpo_users",
            timeout_seconds=2,
        )

    async def test_the_row_is_in_the_table(
        self, provider: SupabaseProvider, supabase: SupabaseStack
    ) -> None:
        user = make_user()
        await provider.create_user(user)
        connection = await asyncpg.connect(supabase.database_url)
        try:
            row = await connection.fetchrow(
                f"SELECT email, created_at, profile FROM {supabase.table} WHERE id = $1", user.id
            )
        finally:
            await connection.close()
        assert row is not None
        assert row["email"] == user.email
        assert row["created_at"] == user.created_at
        assert json.loads(row["profile"]) == user.profile

    async def test_ids_too_many_for_one_url_are_split_across_requests(
        self, provider: SupabaseProvider
    ) -> None:
        written = [DatasetRecord(id=f"{n:03}" + "x" * 197, version=n) for n in range(120)]
        ids = [record.id for record in written]
        assert len(list(url_chunks(ids))) > 1
        await provider.upsert_records("long_ids", written)
        assert by_id(await provider.get_records("long_ids", ids)) == by_id(written)
        assert len(await provider.record_versions("long_ids", ids)) == len(ids)
        assert await provider.delete_records("long_ids", ids) == len(ids)

    async def test_the_migration_can_run_again(self, supabase: SupabaseStack) -> None:
        await migrated(supabase, schema_sql(supabase.table))

    async def test_checksums_are_summed_by_the_database_in_one_request(
        self, provider: SupabaseProvider, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        written = make_records(50)
        # Ids that an ``in.(...)`` list in a URL would have to quote: the keys travel as JSON.
        for n, odd in enumerate(["a,b", 'say "hi"', "(x)", "ü 東京", "back\\slash"]):
            written[n] = written[n].model_copy(update={"id": odd})
        await provider.upsert_records("summed", written)
        versions = versions_of(written)

        async def not_read_back(*_: Any) -> list[RecordVersion]:
            raise AssertionError("the versions were read back")

        monkeypatch.setattr(provider, "record_versions", not_read_back)
        ids = [r.id for r in written]
        assert await provider.checksums("summed", [ids[:20], ids[20:], [], ids[:1] * 3]) == [
            keys_checksum(versions[:20]),
            keys_checksum(versions[20:]),
            KeysChecksum(0, 0),
            keys_checksum(versions[:1]),  # a key named twice counts once
        ]

    async def test_a_schema_without_the_checksum_function_reads_versions_back_with_a_warning(
        self,
        provider: SupabaseProvider,
        supabase: SupabaseStack,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        written = make_records(30)
        await provider.upsert_records("older_schema", written)
        versions = versions_of(written)
        expected = [keys_checksum(versions[:10]), keys_checksum(versions[10:])]
        key_sets = [[r.id for r in written[:10]], [r.id for r in written[10:]]]
        warning = f"function {CHECKSUMS_FUNCTION} not found"

        async def warned() -> bool | None:
            found = await provider.checksums("older_schema", key_sets)
            assert found == expected
            return True if warning in caplog.text else None

        await migrated(supabase, f"DROP FUNCTION {CHECKSUMS_FUNCTION}(text, jsonb)")
        try:
            await eventually(warned)
            assert await provider.checksums("older_schema", key_sets) == expected
            assert caplog.text.count(warning) == 1
        finally:
            await migrated(supabase, schema_sql(supabase.table))

        async def summed_again() -> bool | None:
            client = await provider._ready_client()
            try:
                await client.rpc(
                    CHECKSUMS_FUNCTION, {"dataset_name": "x", "key_sets": []}
                ).execute()
            except APIError:
                return None
            return True

        await eventually(summed_again)

    async def test_a_missing_table_names_the_migration(self, supabase: SupabaseStack) -> None:
        provider = SupabaseProvider.from_settings(
            settings_for(supabase, supabase_table="no_such_table")
        )
        with pytest.raises(ProviderUnavailableError, match="nexpo-workflows db init"):
            await provider.connect()
        await provider.close()

    async def test_a_wrong_key_is_refused_without_showing_it(self, supabase: SupabaseStack) -> None:
        key = make_jwt("another secret of at least 32 characters", {"role": "service_role"})
        provider = SupabaseProvider.from_settings(
            settings_for(supabase, supabase_service_role_key=key)
        )
        with pytest.raises(ProviderUnavailableError) as raised:
            await provider.ping()
        assert key not in str(raised.value)
        assert key.split(".")[2] not in repr(raised.value)
        await provider.close()

    async def test_postgrest_down_is_retryable_and_the_provider_recovers(
        self, provider: SupabaseProvider, supabase: SupabaseStack
    ) -> None:
        user = make_user()
        written = make_records(5)
        ids = [r.id for r in written]
        await supabase.postgrest.stop()
        try:
            with pytest.raises(ProviderUnavailableError, match=r"^supabase: "):
                await provider.ping()
            with pytest.raises(ProviderUnavailableError):
                await provider.create_user(user)
            with pytest.raises(ProviderUnavailableError):
                await provider.get_user(user.id)
            # A batch write and its checksums (the RPC) during the outage: retryable as well.
            with pytest.raises(ProviderUnavailableError):
                await provider.upsert_batch("outage", as_batch(written))
            with pytest.raises(ProviderUnavailableError):
                await provider.checksums("outage", [ids])
        finally:
            await supabase.postgrest.start()
        await provider.ping()
        await provider.create_user(user)
        assert await provider.get_user(user.id) == user
        await provider.upsert_batch("outage", as_batch(written))
        assert await provider.checksums("outage", [ids]) == [keys_checksum(versions_of(written))]
