"""Supabase through its official async client, over the project's REST API (PostgREST).

The service-role key bypasses row-level security, as a backend writing on behalf of the
saga must. PostgREST cannot create tables, so the table comes from a migration
(``SCHEMA_SQL``, run by ``nexpo-workflows db init`` on the project's database) and
``connect`` only checks that it is there. The same migration creates ``nexpo_records``, the
one table of every dataset's records.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Sequence
from typing import ClassVar, Self
from urllib.parse import quote

import httpx
from postgrest import APIError
from postgrest.types import JSON, CountMethod, ReturnMethod
from postgrest.utils import sanitize_param
from pydantic import SecretStr, TypeAdapter
from supabase import AsyncClient, AsyncClientOptions, acreate_client

from nexpo_workflows.config import Settings
from nexpo_workflows.providers.base import (
    RECORDS_STORE,
    DatabaseProvider,
    DatasetRecord,
    DuplicateEmailError,
    InvalidRecordError,
    KeysChecksum,
    ProviderUnavailableError,
    RecordBatch,
    RecordVersion,
    UserRecord,
)
from nexpo_workflows.providers.sql import postgres_row_hash

log = logging.getLogger(__name__)

# The migration, to format with the table names quoted (see ``schema_sql``).
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
CREATE TABLE IF NOT EXISTS {records} (
    dataset text,
    id text,
    version bigint NOT NULL,
    deleted boolean NOT NULL,
    data jsonb NOT NULL,
    PRIMARY KEY (dataset, id)
);
GRANT ALL ON {records} TO service_role;
CREATE OR REPLACE FUNCTION {checksums}(dataset_name text, key_sets jsonb)
RETURNS TABLE (key_set integer, count bigint, total numeric)
LANGUAGE sql STABLE AS $$
    SELECT s.n::integer, c.count, c.total
    FROM jsonb_array_elements(key_sets) WITH ORDINALITY AS s(keys, n)
    CROSS JOIN LATERAL (
        SELECT count(*) AS count, coalesce(sum({row_hash}), 0) AS total FROM {records} AS r
        WHERE r.dataset = dataset_name
        AND r.id = ANY (ARRAY(SELECT jsonb_array_elements_text(s.keys)))
    ) AS c
    ORDER BY s.n
$$;
GRANT EXECUTE ON FUNCTION {checksums}(text, jsonb) TO service_role;
NOTIFY pgrst, 'reload schema';
"""
# Verification's checksums, computed by PostgreSQL behind PostgREST: called as an RPC with
# every key set of a call in one request body. Each set is looked up as an array through the
# primary key: a join with the keys was planned as a scan of the dataset's rows while the table
# had no statistics (a first copy): 0.37 s instead of 0.03 s per 10,000 keys at 1,000,000 rows.
CHECKSUMS_FUNCTION = "nexpo_records_checksums"
# A schema from before the function: PostgREST's code for a function not in its schema cache,
# and PostgreSQL's for one dropped since the cache was loaded.
UNDEFINED_FUNCTION_CODES = frozenset({"PGRST202", "42883"})
_CHECKSUM_ROWS = TypeAdapter(list[dict[str, int]])

UNIQUE_VIOLATION = "23505"
# PostgreSQL's class 22 "data exception" (a NUL character in text or jsonb, a value too long)
# and the integrity errors other than a duplicate that a record itself causes: final.
DATA_EXCEPTION_CLASS = "22"
RECORD_REFUSED_CODES = frozenset({"23502", "23514"})
# PostgreSQL's "undefined table", and PostgREST's own code for a table not in its schema cache.
UNDEFINED_TABLE_CODES = frozenset({"42P01", "PGRST205"})
# An invalid or expired JWT, or a role without rights on the table (an anon key, say).
KEY_REJECTED_CODES = frozenset({"PGRST301", "42501"})
DEFAULT_TIMEOUT_SECONDS = 10.0

_COLUMNS = ",".join(UserRecord.model_fields)
_RECORD_COLUMNS = ",".join(DatasetRecord.model_fields)
_VERSION_COLUMNS = ",".join(RecordVersion.model_fields)
# Reads and deletes name their ids in the URL; proxies in front of PostgREST commonly refuse
# request lines over 8 KB, so each request carries ids up to this many encoded characters.
URL_IDS_BUDGET = 6000


def _quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def schema_sql(table: str) -> str:
    """The migration creating ``table`` and the records table; running it again changes nothing."""
    return SCHEMA_SQL.format(
        table=_quote_identifier(table),
        records=_quote_identifier(RECORDS_STORE),
        checksums=_quote_identifier(CHECKSUMS_FUNCTION),
        row_hash=postgres_row_hash("r.id", "r.version", "r.deleted"),
    )


def url_chunks(ids: Sequence[str]) -> Iterator[Sequence[str]]:
    """``ids`` in consecutive slices whose ``in.(...)`` filter fits ``URL_IDS_BUDGET``
    (a slice holds at least one id, however long)."""
    start, used = 0, 0
    for end, record_id in enumerate(ids):
        size = len(quote(sanitize_param(record_id))) + 1  # and its separating comma
        if used + size > URL_IDS_BUDGET and end > start:
            yield ids[start:end]
            start, used = end, 0
        used += size
    if start < len(ids):
        yield ids[start:]


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
        self._warned_old_schema = False

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
            if error.code in UNDEFINED_TABLE_CODES:  # the records table, on an older schema
                detail += "; run the Supabase migration: nexpo-workflows db init"
        else:
            text = str(error).strip().splitlines()[0] if str(error).strip() else ""
            detail = f"{type(error).__name__}: {text}" if text else type(error).__name__
        return ProviderUnavailableError(f"{self.name}: {detail}")

    def _classified(
        self, error: APIError | httpx.TransportError
    ) -> InvalidRecordError | ProviderUnavailableError:
        """A record PostgreSQL refuses is the caller's and final; anything else may pass."""
        if isinstance(error, APIError) and (
            (error.code or "").startswith(DATA_EXCEPTION_CLASS)
            or error.code in RECORD_REFUSED_CODES
        ):
            return InvalidRecordError(f"{self.name}: {error.message or 'refused'} ({error.code})")
        return self._unavailable(error)

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
                raise self._classified(error) from error
            # the id or the email exists: ours (a retry) or somebody else's
        except httpx.TransportError as error:
            raise self._classified(error) from error
        if await self.get_user(user.id) is None:
            raise DuplicateEmailError(f"{self.name}: a user with email {user.email} exists")

    async def get_user(self, user_id: str) -> UserRecord | None:
        client = await self._ready_client()
        try:
            response = await client.table(self.table).select(_COLUMNS).eq("id", user_id).execute()
        except (APIError, httpx.TransportError) as error:
            raise self._classified(error) from error
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
            raise self._classified(error) from error
        return bool(response.data)

    async def set_password_hash(self, user_id: str, password_hash: str) -> bool:
        client = await self._ready_client()
        try:
            response = (
                await client.table(self.table)
                .update({"password_hash": password_hash}, returning=ReturnMethod.representation)
                .eq("id", user_id)
                .select("id")
                .execute()
            )
        except (APIError, httpx.TransportError) as error:
            raise self._classified(error) from error
        return bool(response.data)

    async def upsert_records(self, dataset: str, records: Sequence[DatasetRecord]) -> None:
        await self._upsert_rows(
            [{"dataset": dataset, **record.model_dump(mode="json")} for record in records]
        )

    async def upsert_batch(self, dataset: str, batch: RecordBatch) -> None:
        """The columns as rows, with no model per record."""
        await self._upsert_rows(
            [
                {"dataset": dataset, "id": i, "version": v, "deleted": d, "data": data}
                for i, v, d, data in zip(
                    batch.ids, batch.versions, batch.deleted, batch.values(), strict=True
                )
            ]
        )

    async def _upsert_rows(self, rows: list[JSON]) -> None:
        if not rows:
            return
        client = await self._ready_client()
        try:
            # One request: PostgREST turns it into one INSERT ... ON CONFLICT DO UPDATE of
            # every column, so a stored row is replaced whole.
            await (
                client.table(RECORDS_STORE)
                .upsert(rows, on_conflict="dataset,id", returning=ReturnMethod.minimal)
                .execute()
            )
        except (APIError, httpx.TransportError) as error:
            raise self._classified(error) from error

    async def checksums(
        self, dataset: str, key_sets: Sequence[Sequence[str]]
    ) -> list[KeysChecksum]:
        """Every set's count and ``row_hash`` sum from the migration's function, in one
        request; on a schema from before that function, from the versions read back."""
        if not key_sets:
            return []
        client = await self._ready_client()
        try:
            response = await client.rpc(
                CHECKSUMS_FUNCTION,
                {"dataset_name": dataset, "key_sets": [list(keys) for keys in key_sets]},
            ).execute()
        except APIError as error:
            if error.code not in UNDEFINED_FUNCTION_CODES:
                raise self._classified(error) from error
            if not self._warned_old_schema:
                self._warned_old_schema = True
                log.warning(
                    "%s: verification reads versions back: function %s not found; "
                    "run the Supabase migration: nexpo-workflows db init",
                    self.name,
                    CHECKSUMS_FUNCTION,
                )
            return await super().checksums(dataset, key_sets)
        except httpx.TransportError as error:
            raise self._classified(error) from error
        rows = _CHECKSUM_ROWS.validate_python(response.data)
        return [KeysChecksum(row["count"], row["total"]) for row in rows]

    async def _select_records(self, dataset: str, ids: Sequence[str], columns: str) -> list[JSON]:
        client = await self._ready_client()
        found: list[JSON] = []
        try:
            for chunk in url_chunks(ids):
                response = await (
                    client.table(RECORDS_STORE)
                    .select(columns)
                    .eq("dataset", dataset)
                    .in_("id", chunk)
                    .execute()
                )
                found += response.data
        except (APIError, httpx.TransportError) as error:
            raise self._classified(error) from error
        return found

    async def get_records(self, dataset: str, ids: Sequence[str]) -> list[DatasetRecord]:
        rows = await self._select_records(dataset, ids, _RECORD_COLUMNS)
        return [DatasetRecord.model_validate(row) for row in rows]

    async def record_versions(self, dataset: str, ids: Sequence[str]) -> list[RecordVersion]:
        rows = await self._select_records(dataset, ids, _VERSION_COLUMNS)
        return [RecordVersion.model_validate(row) for row in rows]

    async def delete_records(self, dataset: str, ids: Sequence[str]) -> int:
        client = await self._ready_client()
        removed = 0
        try:
            for chunk in url_chunks(ids):
                # The count comes back in a header: no need for the deleted rows themselves.
                response = await (
                    client.table(RECORDS_STORE)
                    .delete(count=CountMethod.exact, returning=ReturnMethod.minimal)
                    .eq("dataset", dataset)
                    .in_("id", chunk)
                    .execute()
                )
                removed += response.count or 0
        except (APIError, httpx.TransportError) as error:
            raise self._classified(error) from error
        return removed
