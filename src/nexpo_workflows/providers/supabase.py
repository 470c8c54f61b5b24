"""Supabase through its official async client, over the project's REST API (PostgREST).

The service-role key bypasses row-level security, as a backend writing on behalf of the
saga must. PostgREST cannot create tables, so the table comes from a migration
(``SCHEMA_SQL``, run by ``nexpo-workflows db init`` on the project's database) and
``connect`` only checks that it is there.
"""

from __future__ import annotations

import asyncio
from typing import ClassVar, Self

import httpx
from postgrest import APIError
from postgrest.types import ReturnMethod
from pydantic import SecretStr
from supabase import AsyncClient, AsyncClientOptions, acreate_client

from nexpo_workflows.config import Settings
from nexpo_workflows.providers.base import (
    DatabaseProvider,
    DuplicateEmailError,
    ProviderUnavailableError,
    UserRecord,
)

# The migration, to format with the table name quoted (see ``schema_sql``).
SCHEMA_SQL = """\
CREATE TABLE IF NOT EXISTS {table} (
    id text PRIMARY KEY,
    email text NOT NULL UNIQUE,
    name text NOT NULL,
    password_hash text NOT NULL,
    created_at timestamptz NOT NULL,
    profile jsonb
);
GRANT ALL ON {table} TO service_role;
"""

UNIQUE_VIOLATION = "23505"
# PostgreSQL's "undefined table", and PostgREST's own code for a table not in its schema cache.
UNDEFINED_TABLE_CODES = frozenset({"42P01", "PGRST205"})
# An invalid or expired JWT, or a role without rights on the table (an anon key, say).
KEY_REJECTED_CODES = frozenset({"PGRST301", "42501"})
DEFAULT_TIMEOUT_SECONDS = 10.0

_COLUMNS = ",".join(UserRecord.model_fields)


def _quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def schema_sql(table: str) -> str:
    """The migration creating ``table``; running it again changes nothing."""
    return SCHEMA_SQL.format(table=_quote_identifier(table))


class SupabaseProvider(DatabaseProvider):
    name: ClassVar[str] = "supabase"

    def __init__(
        self,
        url: str,
        service_role_key: SecretStr,
        table: str,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
    ) -> None:
        self.url = url
        self.table = table
        self._key = service_role_key
        self._timeout = httpx.Timeout(timeout_seconds)
        self._client: AsyncClient | None = None
        self._http: httpx.AsyncClient | None = None
        # Concurrent first calls would otherwise each open (and leak) an HTTP client.
        self._connect_lock = asyncio.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        return cls(
            settings.supabase_url, settings.supabase_service_role_key, settings.supabase_table
        )

    async def connect(self) -> None:
        async with self._connect_lock:
            if self._client is not None:
                return
            # Our own HTTP client, so that close() can release its connections (the
            # Supabase client has no close) and the timeout is ours, not its 120 s.
            http = httpx.AsyncClient(timeout=self._timeout)
            try:
                client = await acreate_client(
                    self.url,
                    self._key.get_secret_value(),
                    AsyncClientOptions(
                        httpx_client=http,
                        # Temporal retries the activity with its own policy and deadline.
                        postgrest_client_retry=False,
                        auto_refresh_token=False,
                        persist_session=False,
                    ),
                )
                await self._probe(client)
            except BaseException:
                await http.aclose()
                raise
            self._client, self._http = client, http

    async def close(self) -> None:
        if self._http is not None:
            http, self._http, self._client = self._http, None, None
            await http.aclose()

    async def _ready_client(self) -> AsyncClient:
        await self.connect()
        assert self._client is not None
        return self._client

    def _unavailable(self, error: APIError | httpx.TransportError) -> ProviderUnavailableError:
        if isinstance(error, APIError):
            detail = error.message or "error"
            if error.code:
                detail += f" ({error.code})"
            if error.code in KEY_REJECTED_CODES:
                detail += "; is SUPABASE_SERVICE_ROLE_KEY the project's service-role key?"
        else:
            text = str(error).strip().splitlines()[0] if str(error).strip() else ""
            detail = f"{type(error).__name__}: {text}" if text else type(error).__name__
        return ProviderUnavailableError(f"{self.name}: {detail}")

    async def _probe(self, client: AsyncClient) -> None:
        try:
            await client.table(self.table).select("id").limit(1).execute()
        except APIError as error:
            if error.code in UNDEFINED_TABLE_CODES:
                raise ProviderUnavailableError(
                    f"{self.name}: table {self.table!r} not found; "
                    "run the Supabase migration: nexpo-workflows db init"
                ) from error
            raise self._unavailable(error) from error
        except httpx.TransportError as error:
            raise self._unavailable(error) from error

    async def ping(self) -> None:
        await self._probe(await self._ready_client())

    async def create_user(self, user: UserRecord) -> None:
        client = await self._ready_client()
        try:
            await (
                client.table(self.table)
                .insert(user.model_dump(mode="json"), returning=ReturnMethod.minimal)
                .execute()
            )
            return
        except APIError as error:
            if error.code != UNIQUE_VIOLATION:
                raise self._unavailable(error) from error
            # the id or the email exists: ours (a retry) or somebody else's
        except httpx.TransportError as error:
            raise self._unavailable(error) from error
        if await self.get_user(user.id) is None:
            raise DuplicateEmailError(f"{self.name}: a user with email {user.email} exists")

    async def get_user(self, user_id: str) -> UserRecord | None:
        client = await self._ready_client()
        try:
            response = await client.table(self.table).select(_COLUMNS).eq("id", user_id).execute()
        except (APIError, httpx.TransportError) as error:
            raise self._unavailable(error) from error
        if not response.data:
            return None
        return UserRecord.model_validate(response.data[0])

    async def delete_user(self, user_id: str) -> bool:
        client = await self._ready_client()
        try:
            response = (
                await client.table(self.table)
                .delete(returning=ReturnMethod.representation)
                .eq("id", user_id)
                .select("id")
                .execute()
            )
        except (APIError, httpx.TransportError) as error:
            raise self._unavailable(error) from error
        return bool(response.data)
