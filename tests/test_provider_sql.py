"""SQLite and PostgreSQL providers against real databases; SQL Server's SQL compiled."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.dialects import mssql
from sqlalchemy.dialects.mssql import pyodbc as mssql_pyodbc
from sqlalchemy.schema import CreateColumn, CreateTable
from sqlalchemy.sql import ClauseElement

from nexpo_workflows.config import Settings
from nexpo_workflows.ports import free_port
from nexpo_workflows.providers import DatabaseProvider
from nexpo_workflows.providers import sql as sql_provider
from nexpo_workflows.providers.base import (
    ProviderUnavailableError,
    RecordVersion,
    keys_checksum,
    row_hash,
)
from nexpo_workflows.providers.postgres import PostgresProvider
from nexpo_workflows.providers.sql import RecordStatements, UserStatements, records, users
from nexpo_workflows.providers.sqlite import SQLiteProvider
from nexpo_workflows.providers.sqlserver import SQLServerProvider
from tests.provider_contract import (
    ProviderContract,
    as_batch,
    make_records,
    make_user,
    versions_of,
)
from tests.servers.postgres import cluster_server, fresh_database


class TestSQLiteProvider(ProviderContract):
    @pytest.fixture
    async def provider(self, tmp_path: Path) -> AsyncIterator[DatabaseProvider]:
        provider = SQLiteProvider(tmp_path / "store" / "nexpo.db")
        await provider.connect()
        yield provider
        await provider.close()

    @pytest.fixture
    def unreachable_provider(self, tmp_path: Path) -> DatabaseProvider:
        (tmp_path / "file").write_text("")
        return SQLiteProvider(tmp_path / "file" / "nexpo.db")


# The records table as it was created before the ``row_hash`` column.
RECORDS_BEFORE_ROW_HASH = (
    "CREATE TABLE nexpo_records (dataset VARCHAR(100) NOT NULL, id VARCHAR(200) NOT NULL,"
    " version BIGINT NOT NULL, deleted BOOLEAN NOT NULL, data {json} NOT NULL,"
    " PRIMARY KEY (dataset, id))"
)


@pytest.fixture
def python_row_hashes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The ids SQLite hands to the Python row hash function of connections made from now on."""
    calls: list[str] = []
    hashed = sql_provider._sqlite_row_hash

    def counted(record_id: str, version: int, deleted: int) -> int:
        calls.append(record_id)
        return hashed(record_id, version, deleted)

    monkeypatch.setattr(sql_provider, "_sqlite_row_hash", counted)
    return calls


async def test_sqlite_checksums_sum_the_hashes_stored_with_the_rows(
    tmp_path: Path, python_row_hashes: list[str]
) -> None:
    provider = SQLiteProvider(tmp_path / "nexpo.db")
    await provider.connect()
    try:
        written = make_records(40)
        written[7] = written[7].model_copy(update={"deleted": True, "data": {}})
        await provider.upsert_batch("ds", as_batch(written[:20]))
        await provider.upsert_records("ds", written[20:])
        ids = [r.id for r in written]
        assert await provider.checksums("ds", [ids]) == [keys_checksum(versions_of(written))]
        assert python_row_hashes == []  # every hash was stored with its row
        newer = written[3].model_copy(update={"version": written[3].version + 1})
        await provider.upsert_batch("ds", as_batch([newer]))
        [found] = await provider.checksums("ds", [ids])
        assert found == keys_checksum(versions_of([*written[:3], newer, *written[4:]]))
        assert python_row_hashes == []
    finally:
        await provider.close()


async def test_a_sqlite_records_table_from_before_the_row_hash_column_is_migrated(
    tmp_path: Path, python_row_hashes: list[str]
) -> None:
    path = tmp_path / "nexpo.db"
    old = make_records(5)
    with sqlite3.connect(path) as before:
        before.execute(RECORDS_BEFORE_ROW_HASH.format(json="JSON"))
        before.executemany(
            "INSERT INTO nexpo_records VALUES ('ds', ?, ?, ?, '{}')",
            [(r.id, r.version, r.deleted) for r in old],
        )
    provider = SQLiteProvider(path)
    await provider.connect()
    try:
        # Rows written before: their hashes computed from the rows.
        [found] = await provider.checksums("ds", [[r.id for r in old]])
        assert found == keys_checksum(versions_of(old))
        assert sorted(python_row_hashes) == sorted(r.id for r in old)
        new = make_records(3)
        await provider.upsert_batch("ds", as_batch(new))
        with sqlite3.connect(path) as after:
            stored = dict(after.execute("SELECT id, row_hash FROM nexpo_records").fetchall())
        assert {r.id: stored[r.id] for r in new} == {
            r.id: row_hash(r.id, r.version, r.deleted) for r in new
        }
        assert all(stored[r.id] is None for r in old)
    finally:
        await provider.close()
    await provider.connect()  # the column is there now: connecting again adds nothing
    await provider.close()


@pytest.fixture(scope="module")
async def database_url() -> AsyncIterator[str]:
    async with fresh_database() as url:
        yield url


class TestPostgresProvider(ProviderContract):
    @pytest.fixture
    async def provider(self, database_url: str) -> AsyncIterator[DatabaseProvider]:
        settings = Settings(_env_file=None, enable_postgres=True, postgres_url=database_url)
        provider = PostgresProvider.from_settings(settings)
        await provider.connect()
        yield provider
        await provider.close()

    @pytest.fixture
    def unreachable_provider(self) -> DatabaseProvider:
        return PostgresProvider.from_settings(
            Settings(
                _env_file=None,
                postgres_url=f"postgresql://postgres@127.0.0.1:{free_port()}/postgres",
            )
        )

    async def test_a_records_table_from_before_the_row_hash_column_is_migrated(self) -> None:
        async with fresh_database() as url:
            connection = await asyncpg.connect(url)
            try:
                await connection.execute(RECORDS_BEFORE_ROW_HASH.format(json="json"))
                await connection.execute(
                    "INSERT INTO nexpo_records VALUES ('ds', 'old', 7, false, '{}')"
                )
                settings = Settings(_env_file=None, postgres_url=url)
                provider = PostgresProvider.from_settings(settings)
                await provider.connect()
                new = make_records(3)
                await provider.upsert_batch("ds", as_batch(new))
                one = make_records(1)
                await provider.upsert_records("ds", one)
                stored = dict(await connection.fetch("SELECT id, row_hash FROM nexpo_records"))
                assert stored.pop("old") is None
                assert stored == {r.id: row_hash(r.id, r.version, r.deleted) for r in [*new, *one]}
                [found] = await provider.checksums("ds", [["old", *stored]])
                old = RecordVersion(id="old", version=7, deleted=False)
                assert found == keys_checksum([old, *versions_of([*new, *one])])
                await provider.close()
            finally:
                await connection.close()

    async def test_bulk_writes_and_checksums_work_again_at_once_after_a_server_crash(
        self,
    ) -> None:
        # Both go past SQLAlchemy's adapter to asyncpg itself (COPY, an array parameter): the
        # connection a crash closed must not be handed out again once the server is back.
        async with cluster_server() as server:
            provider = PostgresProvider.from_settings(
                Settings(_env_file=None, postgres_url=server.url)
            )
            await provider.connect()
            try:
                first, second = make_records(5), make_records(5)
                await provider.upsert_batch("ds", as_batch(first))
                await server.stop("immediate")
                with pytest.raises(ProviderUnavailableError):
                    await provider.upsert_batch("ds", as_batch(second))
                await server.start()
                await provider.upsert_batch("ds", as_batch(second))
                await server.stop("immediate")
                with pytest.raises(ProviderUnavailableError):
                    await provider.checksums("ds", [[r.id for r in first]])
                await server.start()
                # Two sets: a call spreads them over two connections of the pool.
                assert await provider.checksums(
                    "ds", [[r.id for r in first], [r.id for r in second]]
                ) == [keys_checksum(versions_of(first)), keys_checksum(versions_of(second))]
                # The pool now holds two connections, both dead after the next crash: the first
                # call after it fails, and takes the other dead one out with its own.
                await server.stop("immediate")
                await server.start()
                with pytest.raises(ProviderUnavailableError):
                    await provider.checksums("ds", [[r.id for r in first]])
                assert await provider.checksums("ds", [[r.id for r in second]]) == [
                    keys_checksum(versions_of(second))
                ]
            finally:
                await provider.close()

    async def test_schema_creation_is_idempotent(self, database_url: str) -> None:
        settings = Settings(_env_file=None, postgres_url=database_url)
        first, second = (PostgresProvider.from_settings(settings) for _ in range(2))
        await first.connect()
        await second.connect()
        user = make_user()
        await first.create_user(user)
        assert await second.get_user(user.id) == user
        await first.close()
        await second.close()


def compiled(statement: ClauseElement | CreateTable) -> str:
    return str(statement.compile(dialect=mssql.dialect()))  # type: ignore[no-untyped-call]


def test_sqlserver_statements_compile_with_the_mssql_dialect() -> None:
    ddl = compiled(CreateTable(users))
    assert "CREATE TABLE nexpo_users" in ddl
    assert "created_at DATETIMEOFFSET NOT NULL" in ddl
    assert "UNIQUE (email)" in ddl
    user = make_user()
    assert compiled(UserStatements.insert_user(user)).startswith("INSERT INTO nexpo_users")
    select = compiled(UserStatements.select_user(user.id))
    assert "FROM nexpo_users" in select
    assert "WHERE nexpo_users.id = " in select
    assert compiled(UserStatements.delete_user(user.id)).startswith("DELETE FROM nexpo_users")
    rehash = compiled(UserStatements.set_password_hash(user.id, user.password_hash))
    assert rehash.startswith("UPDATE nexpo_users SET password_hash=")
    assert "WHERE nexpo_users.id = " in rehash


def test_sqlserver_record_statements_compile_with_the_mssql_dialect() -> None:
    ddl = compiled(CreateTable(records))
    assert "CREATE TABLE nexpo_records" in ddl
    # What a table created before the column gets: ALTER TABLE nexpo_records ADD <this>.
    assert compiled(CreateColumn(records.c.row_hash)) == "row_hash BIGINT NULL"
    assert "PRIMARY KEY (dataset, id)" in ddl
    ids = ["a", "b"]
    for select in (
        compiled(RecordStatements.select("ds", ids)),
        compiled(RecordStatements.select_versions("ds", ids)),
    ):
        assert "FROM nexpo_records" in select
        assert "WHERE nexpo_records.dataset = " in select
        assert "nexpo_records.id IN (" in select
    columns = compiled(RecordStatements.select_versions("ds", ids)).split("FROM")[0].strip()
    assert columns == "SELECT nexpo_records.id, nexpo_records.version, nexpo_records.deleted"
    delete = compiled(RecordStatements.delete("ds", ids))
    assert delete.startswith("DELETE FROM nexpo_records")
    assert "nexpo_records.id IN (" in delete
    assert compiled(RecordStatements.insert()).startswith("INSERT INTO nexpo_records")
    assert RecordStatements.upsert(mssql.dialect()) is None  # type: ignore[no-untyped-call]
    # Verification's version reads, compiled for the driver: aioodbc is a pyodbc dialect, whose
    # DBAPI sets the positional "qmark" style when an engine is made.
    provider = SQLServerProvider("mssql+aioodbc://nowhere/db")
    qmark = mssql_pyodbc.dialect(paramstyle="qmark")  # type: ignore[no-untyped-call]
    sql = provider._versions_sql(qmark, 3)  # executed with (dataset, id0, id1, id2)
    assert sql.count("?") == 4
    assert "nexpo_records.id IN (?, ?, ?)" in sql


def test_sqlserver_url_gets_the_async_driver() -> None:
    settings = Settings(
        _env_file=None,
        enable_sqlserver=True,
        sqlserver_url="mssql://sa:pw@db.example:1433/app?driver=ODBC+Driver+18+for+SQL+Server",
    )
    assert SQLServerProvider.from_settings(settings).url.startswith("mssql+aioodbc://sa:pw@")


@pytest.mark.skipif("MSSQL_URL" not in os.environ, reason="no SQL Server here; set MSSQL_URL")
class TestSQLServerProvider(ProviderContract):
    @pytest.fixture
    async def provider(self) -> AsyncIterator[DatabaseProvider]:
        settings = Settings(
            _env_file=None, enable_sqlserver=True, sqlserver_url=os.environ["MSSQL_URL"]
        )
        provider = SQLServerProvider.from_settings(settings)
        await provider.connect()
        yield provider
        await provider.close()

    @pytest.fixture
    def unreachable_provider(self) -> DatabaseProvider:
        return SQLServerProvider(f"mssql+aioodbc://sa:x@127.0.0.1:{free_port()}/master")
