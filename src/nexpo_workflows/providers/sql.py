"""One implementation for the SQL providers (SQLite, PostgreSQL, SQL Server), on SQLAlchemy Core.

Portable statements only, so the SQL Server dialect compiles the same statements that run on
SQLite and PostgreSQL in the tests; the one exception is the bulk upsert of dataset records,
``INSERT ... ON CONFLICT`` where the dialect has it, a delete and insert in one transaction
elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC
from typing import Any

from pydantic_core import to_json
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    MetaData,
    String,
    Table,
    bindparam,
    delete,
    event,
    exc,
    func,
    insert,
    inspect,
    literal_column,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.ext import asyncio as sqlalchemy_asyncio
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.schema import CreateColumn
from sqlalchemy.sql import ClauseElement, ColumnElement, Delete, Insert, Select, Update
from sqlalchemy.sql.compiler import SQLCompiler

from nexpo_workflows.errors import first_line
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
    chunked,
    row_hash,
)

metadata = MetaData()

users = Table(
    "nexpo_users",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("email", String(320), nullable=False, unique=True),
    Column("name", String(200), nullable=False),
    Column("password_hash", String(512), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("profile", JSON, nullable=True),
)

records = Table(
    RECORDS_STORE,
    metadata,
    Column("dataset", String(100), primary_key=True),
    Column("id", String(200), primary_key=True),
    Column("version", BigInteger, nullable=False),
    Column("deleted", Boolean, nullable=False),
    Column("data", JSON, nullable=False),
    # ``row_hash`` of the row's id, version and tombstone, written with them by every write of
    # this module: what SQLite's checksums sum, as SQLite computes no MD5 (PostgreSQL computes
    # its own). NULL in a row written before the column existed: computed from the row then.
    Column("row_hash", BigInteger, nullable=True),
)

# Connections a PostgreSQL checksum call spreads its key sets over: the lookups of a batch's
# verification on two backends (two cores) instead of one. (A batch's write spread the same
# way gained nothing: 55,531 rows/s against 55,721 at 1,000,000 rows.)
CHECKSUM_CONNECTIONS = 2
# Ids per statement in IN (...) lists: below SQL Server's 2,100 parameters and SQLite's 32,766.
IN_LIST_CHUNK = 1000


def with_driver(url: str, scheme: str) -> str:
    """``postgresql://...`` as users write it, with the async driver SQLAlchemy needs."""
    given, sep, rest = url.partition("://")
    if not sep:
        raise ValueError("not a database URL (expected scheme://...)")
    return f"{scheme}://{rest}" if "+" not in given else url


class UserStatements:
    """The statements the SQL providers run, built without a connection (and so compilable)."""

    @staticmethod
    def insert_user(user: UserRecord) -> Insert:
        return insert(users).values(**user.model_dump())

    @staticmethod
    def select_user(user_id: str) -> Select[Any]:
        return select(users).where(users.c.id == user_id)

    @staticmethod
    def delete_user(user_id: str) -> Delete:
        return delete(users).where(users.c.id == user_id)

    @staticmethod
    def set_password_hash(user_id: str, password_hash: str) -> Update:
        return update(users).where(users.c.id == user_id).values(password_hash=password_hash)


# The dialects whose INSERT has ON CONFLICT DO UPDATE, by name.
_UPSERTING_INSERTS: dict[str, Callable[[Table], postgresql.Insert | sqlite.Insert]] = {
    "postgresql": postgresql.insert,
    "sqlite": sqlite.insert,
}


class RecordStatements:
    """The statements of dataset records; ``upsert`` depends on the dialect."""

    @staticmethod
    def upsert(dialect: Dialect) -> Insert | None:
        """One statement that inserts or replaces, executed with many rows; None where the
        dialect has none (SQL Server), and a delete then insert is used instead."""
        dialect_insert = _UPSERTING_INSERTS.get(dialect.name)
        if dialect_insert is None:
            return None
        statement = dialect_insert(records)
        excluded = statement.excluded
        return statement.on_conflict_do_update(
            index_elements=[records.c.dataset, records.c.id],
            set_={
                "version": excluded.version,
                "deleted": excluded.deleted,
                "data": excluded.data,
                "row_hash": excluded.row_hash,
            },
        )

    @staticmethod
    def insert() -> Insert:
        return insert(records)

    @staticmethod
    def select(dataset: str, ids: Sequence[str]) -> Select[Any]:
        return select(records).where(records.c.dataset == dataset, records.c.id.in_(ids))

    @staticmethod
    def select_versions(dataset: Any, ids: Sequence[Any]) -> Select[Any]:
        return select(records.c.id, records.c.version, records.c.deleted).where(
            records.c.dataset == dataset, records.c.id.in_(ids)
        )

    @staticmethod
    def delete(dataset: str, ids: Sequence[str]) -> Delete:
        return delete(records).where(records.c.dataset == dataset, records.c.id.in_(ids))


# ``row_hash`` as each engine computes it over a row of ``records``: PostgreSQL from MD5 itself,
# SQLite by the function every connection of the provider registers. Engines not named here
# (SQL Server) read the versions and hash them in Python.
ROW_HASH_FUNCTION = "nexpo_row_hash"


def postgres_row_hash(record_id: str, version: str, deleted: str) -> str:
    """``row_hash`` as a PostgreSQL expression over three SQL expressions: the id as text, the
    version as a bigint, the tombstone flag as a boolean."""
    return (
        f"('x' || substr(md5({record_id} || ':' || ({version})::text || ':'"
        f" || CASE WHEN {deleted} THEN '1' ELSE '0' END), 1, 12))::bit(48)::bigint"
    )


_ROW_HASH_SQL = {
    "postgresql": postgres_row_hash("id", "version", "deleted"),
    # The stored hash, and the function (a call into Python per row) only where it is NULL.
    "sqlite": f"coalesce(row_hash, {ROW_HASH_FUNCTION}(id, version, deleted))",
}

# The staging table a PostgreSQL bulk write copies into, then upserts from in one statement.
_STAGING = "nexpo_records_staging"
_STAGING_DDL = (
    f"CREATE TEMPORARY TABLE IF NOT EXISTS {_STAGING} (dataset text, id text, version bigint,"
    " deleted boolean, data text, row_hash bigint) ON COMMIT DELETE ROWS"
)
_UPSERT_FROM_STAGING = (
    f"INSERT INTO {RECORDS_STORE} (dataset, id, version, deleted, data, row_hash)"
    f" SELECT dataset, id, version, deleted, data::json, row_hash FROM {_STAGING}"
    " ON CONFLICT (dataset, id) DO UPDATE SET version = excluded.version,"
    " deleted = excluded.deleted, data = excluded.data, row_hash = excluded.row_hash"
)


# Count and row-hash sum of the records of one dataset ($1) among a set of keys ($2), each key
# once, looked up through the primary key.
_ARRAY_CHECKSUM = (
    f"SELECT count(*), sum({_ROW_HASH_SQL['postgresql']}) FROM"
    f" (SELECT DISTINCT unnest($2::text[]) AS key) AS wanted JOIN {RECORDS_STORE}"
    " ON dataset = $1 AND id = wanted.key"
)


def _sqlite_row_hash(record_id: str, version: int, deleted: int) -> int:
    return row_hash(record_id, version, bool(deleted))


def _driver_sql(statement: ClauseElement, dialect: Dialect) -> tuple[str, tuple[str, ...]]:
    """``statement`` as the driver's own SQL and the names of its parameters in order, for
    ``exec_driver_sql`` with plain tuples (no per-row parameter processing by SQLAlchemy)."""
    compiled = statement.compile(dialect=dialect)
    assert isinstance(compiled, SQLCompiler)
    assert compiled.positiontup is not None  # the drivers' qmark and numeric styles
    return str(compiled), tuple(compiled.positiontup)


def _keyed_sql(statement: ClauseElement, dialect: Dialect, count: int) -> str:
    """``statement``, whose parameters are ``dataset`` and ``id0`` to ``id<count - 1>``, as the
    driver's own SQL, to execute with ``(dataset, *ids)``: its parameters come in that order."""
    sql, order = _driver_sql(statement, dialect)
    assert order == ("dataset", *(f"id{n}" for n in range(count))), order
    return sql


def is_data_error(error: BaseException) -> bool:
    """Whether the driver reports SQLSTATE class 22: asyncpg gives the code as ``sqlstate``
    (SQLAlchemy's adapter wraps its DataError as a plain DBAPIError), pyodbc as the first
    argument, and drivers that sort their errors raise DataError."""
    if isinstance(error, exc.DataError):
        return True
    if not isinstance(error, exc.DBAPIError):
        return False
    original = error.orig
    code = getattr(original, "sqlstate", None)
    if code is None and original is not None and original.args:
        code = original.args[0]
    return isinstance(code, str) and len(code) == 5 and code.startswith("22")


@contextlib.asynccontextmanager
async def asyncpg_connection(engine: AsyncEngine, statement: str) -> AsyncIterator[Any]:
    """asyncpg's own connection from ``engine``'s pool, for what SQLAlchemy's adapter does not
    offer (COPY, array parameters, records without per-row processing). Its errors, raised past
    the adapter, are raised as SQLAlchemy's (naming ``statement``), and the connection is
    dropped: SQLAlchemy does not see that asyncpg's own error closed it (a server restarted),
    and would hand it out again. Where the connection was lost, so were the others of the pool
    (a server gone closes them all): the pool is replaced, as SQLAlchemy does on a disconnect
    it sees."""
    from asyncpg import InterfaceError, PostgresError
    from asyncpg.exceptions import (
        AdminShutdownError,
        CannotConnectNowError,
        CrashShutdownError,
        PostgresConnectionError,
    )

    lost = (
        InterfaceError,
        OSError,
        PostgresConnectionError,
        AdminShutdownError,
        CrashShutdownError,
        CannotConnectNowError,
    )
    async with engine.connect() as connection:
        raw = await connection.get_raw_connection()
        try:
            yield raw.driver_connection
        except (PostgresError, InterfaceError, OSError) as error:
            await connection.invalidate()
            if isinstance(error, lost):
                await engine.dispose()
            raise exc.DBAPIError(statement, None, error) from error


def _chunks(ids: Sequence[str]) -> list[Sequence[str]]:
    return chunked(ids, IN_LIST_CHUNK)


def _register_row_hash(dbapi_connection: Any, _: Any) -> None:
    dbapi_connection.create_function(ROW_HASH_FUNCTION, 3, _sqlite_row_hash, deterministic=True)


def _create_schema(connection: Connection) -> None:
    """The tables, and the columns added to ``records`` since a table was created (``create_all``
    creates missing tables only)."""
    metadata.create_all(connection, checkfirst=True)
    present = {column["name"] for column in inspect(connection).get_columns(RECORDS_STORE)}
    for column in records.columns:
        if column.name not in present:
            spec = CreateColumn(column).compile(dialect=connection.dialect)
            connection.exec_driver_sql(f"ALTER TABLE {RECORDS_STORE} ADD {spec}")


class SQLProvider(DatabaseProvider):
    """A provider over any SQLAlchemy async URL; subclasses only name themselves and their URL."""

    def __init__(self, url: str, **engine_options: Any) -> None:
        self.url = url
        self._engine_options = engine_options
        self._engine: AsyncEngine | None = None
        self._compiled_upsert: tuple[str, tuple[str, ...]] | None = None
        self._compiled_versions: dict[int, str] = {}
        self._compiled_checksums: dict[int, str] = {}

    async def _prepare(self) -> None:
        """Anything to do before the engine is created (a directory for a file database)."""

    async def connect(self) -> None:
        if self._engine is not None:
            return
        await self._prepare()
        # No pre-ping (a round trip per checkout): a dropped connection fails its step,
        # SQLAlchemy discards it, and the step's retry gets a fresh one.
        # Looked up on its module at call time: OpenTelemetry's wrapper (tracing.py), installed
        # after this module was imported, then instruments the engine.
        engine = sqlalchemy_asyncio.create_async_engine(self.url, **self._engine_options)
        if engine.dialect.name == "sqlite":
            event.listen(engine.sync_engine, "connect", _register_row_hash)
        try:
            async with engine.begin() as connection:
                await connection.run_sync(_create_schema)
        except Exception as error:
            await engine.dispose()
            raise self._unavailable(error) from error
        self._engine = engine

    async def close(self) -> None:
        if self._engine is not None:
            engine, self._engine = self._engine, None
            await engine.dispose()

    async def ready_engine(self) -> AsyncEngine:
        await self.connect()
        assert self._engine is not None
        return self._engine

    def _unavailable(self, error: BaseException) -> ProviderUnavailableError:
        return ProviderUnavailableError(f"{self.name}: {first_line(error)}")

    def _classified(self, error: BaseException) -> InvalidRecordError | ProviderUnavailableError:
        """A value the database refuses (SQLSTATE class 22, "data exception": a NUL character
        in PostgreSQL text, a string longer than its column...) is the caller's and final;
        anything else may pass and is retried."""
        if is_data_error(error):
            return InvalidRecordError(f"{self.name}: {first_line(error)}")
        return self._unavailable(error)

    def sql_source(self) -> SQLProvider:
        return self

    async def ping(self) -> None:
        engine = await self.ready_engine()
        try:
            async with engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
        except (exc.DBAPIError, OSError) as error:
            raise self._unavailable(error) from error

    async def create_user(self, user: UserRecord) -> None:
        engine = await self.ready_engine()
        try:
            async with engine.begin() as connection:
                await connection.execute(UserStatements.insert_user(user))
            return
        except exc.IntegrityError:
            pass  # the id or the email exists: ours (a retry) or somebody else's
        except (exc.DBAPIError, OSError) as error:
            raise self._classified(error) from error
        if await self.get_user(user.id) is None:
            raise DuplicateEmailError(f"{self.name}: a user with email {user.email} exists")

    async def get_user(self, user_id: str) -> UserRecord | None:
        engine = await self.ready_engine()
        try:
            async with engine.connect() as connection:
                row = (await connection.execute(UserStatements.select_user(user_id))).first()
        except (exc.DBAPIError, OSError) as error:
            raise self._classified(error) from error
        if row is None:
            return None
        values = row._asdict()
        if values["created_at"].tzinfo is None:  # SQLite keeps no zone; we write UTC
            values["created_at"] = values["created_at"].replace(tzinfo=UTC)
        return UserRecord.model_validate(values)

    async def delete_user(self, user_id: str) -> bool:
        return await self._changes_a_row(UserStatements.delete_user(user_id))

    async def set_password_hash(self, user_id: str, password_hash: str) -> bool:
        return await self._changes_a_row(UserStatements.set_password_hash(user_id, password_hash))

    async def _changes_a_row(self, statement: Delete | Update) -> bool:
        engine = await self.ready_engine()
        try:
            async with engine.begin() as connection:
                result = await connection.execute(statement)
        except (exc.DBAPIError, OSError) as error:
            raise self._classified(error) from error
        return bool(result.rowcount)

    def _bulk_upsert(self, dialect: Dialect) -> tuple[str, tuple[str, ...]] | None:
        """The upsert as the driver's own SQL and the order of its parameters, compiled once.

        Executed with plain tuples (and the JSON already encoded), it skips SQLAlchemy's
        per-row parameter processing, the larger part of a bulk write's cost here.
        """
        if self._compiled_upsert is None:
            upsert = RecordStatements.upsert(dialect)
            if upsert is None:
                return None
            self._compiled_upsert = _driver_sql(upsert, dialect)
        return self._compiled_upsert

    async def upsert_records(self, dataset: str, records: Sequence[DatasetRecord]) -> None:
        if not records:
            return
        engine = await self.ready_engine()
        bulk = self._bulk_upsert(engine.dialect)
        hashes = [row_hash(r.id, r.version, r.deleted) for r in records]
        try:
            async with engine.begin() as connection:
                if bulk is not None:
                    sql, order = bulk
                    columns = {
                        "dataset": [dataset] * len(records),
                        "id": [r.id for r in records],
                        "version": [r.version for r in records],
                        "deleted": [r.deleted for r in records],
                        # pydantic-core's encoder: several times faster than json.dumps.
                        "data": [to_json(r.data).decode() for r in records],
                        "row_hash": hashes,
                    }
                    rows = list(zip(*(columns[name] for name in order), strict=True))
                    await connection.exec_driver_sql(sql, rows)
                    return
                for chunk in _chunks([record.id for record in records]):
                    await connection.execute(RecordStatements.delete(dataset, chunk))
                await connection.execute(
                    RecordStatements.insert(),
                    [
                        {"dataset": dataset, **record.model_dump(), "row_hash": hashed}
                        for record, hashed in zip(records, hashes, strict=True)
                    ],
                )
        except (exc.DBAPIError, OSError) as error:
            raise self._classified(error) from error

    async def upsert_batch(self, dataset: str, batch: RecordBatch) -> None:
        """PostgreSQL: COPY into a staging table, then one set-based upsert from it. SQLite:
        the compiled upsert executed with the columns as tuples. Elsewhere: upsert_records."""
        if not batch:
            return
        engine = await self.ready_engine()
        data = batch.json_data()
        columns: dict[str, list[Any]] = {
            "dataset": [dataset] * len(batch),
            "id": batch.ids,
            "version": batch.versions,
            "deleted": batch.deleted,
            "data": data,
            "row_hash": batch.hashes(),
        }
        try:
            if engine.dialect.name == "postgresql":
                await self._copy_upsert(engine, columns)
                return
            bulk = self._bulk_upsert(engine.dialect)
            if bulk is None:
                await self.upsert_records(dataset, batch.records())
                return
            sql, order = bulk
            async with engine.begin() as connection:
                rows = list(zip(*(columns[name] for name in order), strict=True))
                await connection.exec_driver_sql(sql, rows)
        except (exc.DBAPIError, OSError) as error:
            raise self._classified(error) from error

    async def _copy_upsert(self, engine: AsyncEngine, columns: dict[str, list[Any]]) -> None:
        async with (
            asyncpg_connection(engine, _UPSERT_FROM_STAGING) as driver,
            driver.transaction(),
        ):
            await driver.execute(_STAGING_DDL)
            await driver.copy_records_to_table(
                _STAGING, records=zip(*columns.values(), strict=True), columns=list(columns)
            )
            await driver.execute(_UPSERT_FROM_STAGING)

    def _checksums_sql(self, dialect: Dialect, count: int) -> str:
        """Count and row-hash sum of ``count`` ids, compiled once per count (see
        ``_versions_sql``)."""
        if count not in self._compiled_checksums:
            hashed: ColumnElement[int] = literal_column(_ROW_HASH_SQL[dialect.name])
            statement = select(func.count(), func.sum(hashed)).where(
                records.c.dataset == bindparam("dataset"),
                records.c.id.in_([bindparam(f"id{n}") for n in range(count)]),
            )
            self._compiled_checksums[count] = _keyed_sql(statement, dialect, count)
        return self._compiled_checksums[count]

    async def checksums(
        self, dataset: str, key_sets: Sequence[Sequence[str]]
    ) -> list[KeysChecksum]:
        engine = await self.ready_engine()
        if engine.dialect.name not in _ROW_HASH_SQL:
            return await super().checksums(dataset, key_sets)
        if engine.dialect.name == "postgresql":
            return await self._array_checksums(engine, dataset, key_sets)
        found: list[KeysChecksum] = []
        try:
            async with engine.connect() as connection:
                for keys in key_sets:
                    sums = KeysChecksum(0, 0)
                    for chunk in _chunks(keys):
                        sql = self._checksums_sql(engine.dialect, len(chunk))
                        result = await connection.exec_driver_sql(sql, (dataset, *chunk))
                        row: Sequence[Any] = result.one()
                        count, total = row
                        # No row: the sum is NULL.
                        sums = KeysChecksum(sums.count + count, sums.total + int(total or 0))
                    found.append(sums)
        except (exc.DBAPIError, OSError) as error:
            raise self._classified(error) from error
        return found

    async def _array_checksums(
        self, engine: AsyncEngine, dataset: str, key_sets: Sequence[Sequence[str]]
    ) -> list[KeysChecksum]:
        """PostgreSQL: each set as one array parameter, joined to the key index. An IN list of
        parameters was planned as a scan of the dataset's rows filtered by the list whenever
        the table had no statistics yet (a first copy): seconds per set at 100,000 rows."""

        async def summed(part: Sequence[Sequence[str]]) -> list[KeysChecksum]:
            found: list[KeysChecksum] = []
            async with asyncpg_connection(engine, _ARRAY_CHECKSUM) as driver:
                for keys in part:
                    count, total = await driver.fetchrow(_ARRAY_CHECKSUM, dataset, list(keys))
                    found.append(KeysChecksum(count, int(total or 0)))  # no row: a NULL sum
            return found

        # Every CHECKSUM_CONNECTIONS-th set on a connection of its own, so that as many
        # backends share the lookups; put back in order after.
        spread = min(CHECKSUM_CONNECTIONS, len(key_sets))
        try:
            parts = await asyncio.gather(*(summed(key_sets[n::spread]) for n in range(spread)))
        except (exc.DBAPIError, OSError) as error:
            raise self._classified(error) from error
        return [parts[n % spread][n // spread] for n in range(len(key_sets))]

    async def _select_in_chunks(
        self, statement: Any, dataset: str, ids: Sequence[str]
    ) -> list[dict[str, Any]]:
        engine = await self.ready_engine()
        found: list[dict[str, Any]] = []
        try:
            async with engine.connect() as connection:
                for chunk in _chunks(ids):
                    result = await connection.execute(statement(dataset, chunk))
                    names = result.keys()
                    found += [dict(zip(names, row, strict=True)) for row in result]
        except (exc.DBAPIError, OSError) as error:
            raise self._classified(error) from error
        return found

    async def get_records(self, dataset: str, ids: Sequence[str]) -> list[DatasetRecord]:
        rows = await self._select_in_chunks(RecordStatements.select, dataset, ids)
        return [DatasetRecord.model_validate(row) for row in rows]

    def _versions_sql(self, dialect: Dialect, count: int) -> str:
        """``select_versions`` for ``count`` ids as the driver's own SQL, compiled once per
        count: verification reads a whole batch of versions from every target, and compiling an
        expanding IN list for each chunk was most of that read's cost."""
        if count not in self._compiled_versions:
            statement = RecordStatements.select_versions(
                bindparam("dataset"), [bindparam(f"id{n}") for n in range(count)]
            )
            self._compiled_versions[count] = _keyed_sql(statement, dialect, count)
        return self._compiled_versions[count]

    async def record_versions(self, dataset: str, ids: Sequence[str]) -> list[RecordVersion]:
        engine = await self.ready_engine()
        found: list[RecordVersion] = []
        try:
            async with engine.connect() as connection:
                for chunk in _chunks(ids):
                    sql = self._versions_sql(engine.dialect, len(chunk))
                    result = await connection.exec_driver_sql(sql, (dataset, *chunk))
                    # SQLite answers the flag as 0 or 1: bool() makes it a flag everywhere.
                    rows: Sequence[Any] = result.all()
                    found += [
                        RecordVersion(id=row[0], version=row[1], deleted=bool(row[2]))
                        for row in rows
                    ]
        except (exc.DBAPIError, OSError) as error:
            raise self._classified(error) from error
        return found

    async def delete_records(self, dataset: str, ids: Sequence[str]) -> int:
        engine = await self.ready_engine()
        removed = 0
        try:
            async with engine.begin() as connection:
                for chunk in _chunks(ids):
                    result = await connection.execute(RecordStatements.delete(dataset, chunk))
                    removed += result.rowcount
        except (exc.DBAPIError, OSError) as error:
            raise self._classified(error) from error
        return removed
