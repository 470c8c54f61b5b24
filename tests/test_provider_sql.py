"""SQLite and PostgreSQL providers against real databases; SQL Server's SQL compiled."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.dialects import mssql
from sqlalchemy.dialects.mssql import pyodbc as mssql_pyodbc
from sqlalchemy.schema import CreateTable
from sqlalchemy.sql import ClauseElement

from nexpo_workflows.config import Settings
from nexpo_workflows.ports import free_port
from nexpo_workflows.providers import DatabaseProvider
from nexpo_workflows.providers.postgres import PostgresProvider
from nexpo_workflows.providers.sql import RecordStatements, UserStatements, records, users
from nexpo_workflows.providers.sqlite import SQLiteProvider
from nexpo_workflows.providers.sqlserver import SQLServerProvider
from tests.provider_contract import ProviderContract, make_user
from tests.servers.postgres import fresh_database


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
    sql, order = provider._versions_sql(qmark, 3)
    assert order == ("dataset", "id0", "id1", "id2")
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
