"""``nexpo-workflows db init``: create every enabled provider's schema."""

from __future__ import annotations

from nexpo_workflows.config import Settings
from nexpo_workflows.providers import enabled_providers


async def create_schemas(settings: Settings) -> list[str]:
    """Each provider creates its own schema on connect; Supabase's table needs the project's
    database URL, because its REST API cannot run DDL."""
    done = []
    if settings.enable_supabase and settings.supabase_db_url is not None:
        import asyncpg

        from nexpo_workflows.providers.base import RECORDS_STORE
        from nexpo_workflows.providers.supabase import CHECKSUMS_FUNCTION, schema_sql

        connection = await asyncpg.connect(settings.supabase_db_url.get_secret_value())
        try:
            await connection.execute(schema_sql(settings.supabase_table))
        finally:
            await connection.close()
        done.append(
            f"supabase: tables {settings.supabase_table} and {RECORDS_STORE},"
            f" function {CHECKSUMS_FUNCTION} ready"
        )
    for name, provider in enabled_providers(settings).items():
        try:
            await provider.connect()
        finally:
            await provider.close()
        done.append(f"{name}: ready")
    return done
