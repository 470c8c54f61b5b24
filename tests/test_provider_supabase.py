"""The Supabase provider against the real PostgREST binary on a real PostgreSQL database."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from pydantic import SecretStr

from nexpo_workflows.config import Settings
from nexpo_workflows.ports import free_port
from nexpo_workflows.providers import DatabaseProvider, DatasetRecord, ProviderUnavailableError
from nexpo_workflows.providers.supabase import SupabaseProvider, schema_sql, url_chunks
from tests.provider_contract import ProviderContract, by_id, make_user
from tests.servers.supabase import SupabaseStack, make_jwt, running_supabase


@pytest.fixture(scope="module")
async def supabase() -> AsyncIterator[SupabaseStack]:
    async with running_supabase() as stack:
        yield stack


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
        connection = await asyncpg.connect(supabase.database_url)
        try:
            await connection.execute(schema_sql(supabase.table))
        finally:
            await connection.close()

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
        await supabase.postgrest.stop()
        try:
            with pytest.raises(ProviderUnavailableError, match=r"^supabase: "):
                await provider.ping()
            with pytest.raises(ProviderUnavailableError):
                await provider.create_user(user)
            with pytest.raises(ProviderUnavailableError):
                await provider.get_user(user.id)
        finally:
            await supabase.postgrest.start()
        await provider.ping()
        await provider.create_user(user)
        assert await provider.get_user(user.id) == user
