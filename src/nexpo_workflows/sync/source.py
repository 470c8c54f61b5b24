"""Reading a dataset from its source table, by keyset on (version, id).

The table is reflected once, so its column types decide how a watermark maps back to SQL
(a timestamp from microseconds, an integer id from its text) and rows are read with plain
SQLAlchemy Core: portable to every SQL provider.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    DateTime,
    Integer,
    MetaData,
    Table,
    and_,
    exc,
    or_,
    select,
)
from sqlalchemy.sql import Select

from nexpo_workflows.errors import first_line
from nexpo_workflows.providers.base import ProviderUnavailableError, RecordVersion
from nexpo_workflows.providers.sql import SQLProvider
from nexpo_workflows.sync.models import ChangeBatch, SyncSource, Watermark

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class SourceConfigError(Exception):
    """The source table or one of its configured columns does not exist."""


@dataclass(slots=True)
class SourceRow:
    id: str
    version: int
    deleted: bool
    data: dict[str, Any]


def to_version(value: Any) -> int:
    """A version from a timestamp (microseconds since the epoch, naive = UTC) or an integer."""
    if isinstance(value, datetime):
        moment = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        delta = moment - EPOCH
        return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    return int(value)


class SourceTable:
    """One dataset's source: the configured table of a SQL provider."""

    def __init__(self, provider: SQLProvider, source: SyncSource) -> None:
        self._provider = provider
        self._source = source
        self._table: Table | None = None
        self._reflecting = asyncio.Lock()

    async def _reflected(self) -> Table:
        async with self._reflecting:
            if self._table is None:
                engine = await self._provider.ready_engine()
                try:
                    async with engine.connect() as connection:
                        table = await connection.run_sync(
                            lambda sync: Table(self._source.table, MetaData(), autoload_with=sync)
                        )
                except exc.NoSuchTableError:
                    raise SourceConfigError(
                        f"{self._provider.name} has no table {self._source.table!r}"
                    ) from None
                except (exc.DBAPIError, OSError) as error:
                    raise self._unavailable(error) from error
                wanted = [
                    self._source.key_column,
                    self._source.updated_at_column,
                    *filter(None, [self._source.deleted_column, self._source.data_column]),
                    *self._source.where,
                ]
                missing = [name for name in wanted if name not in table.c]
                if missing:
                    raise SourceConfigError(
                        f"table {self._source.table!r} has no column {', '.join(missing)}"
                    )
                self._table = table
            return self._table

    def _unavailable(self, error: BaseException) -> ProviderUnavailableError:
        return ProviderUnavailableError(f"{self._provider.name}: {first_line(error)}")

    def _bound(self, table: Table, mark: Watermark) -> tuple[Any, Any]:
        version_type = table.c[self._source.updated_at_column].type
        if isinstance(version_type, DateTime):
            seconds, micros = divmod(mark.version, 1_000_000)
            moment = datetime.fromtimestamp(seconds, UTC).replace(microsecond=micros)
            naive = not version_type.timezone
            version: Any = moment.replace(tzinfo=None) if naive else moment
        else:
            version = mark.version
        integer_key = isinstance(table.c[self._source.key_column].type, Integer)
        return version, int(mark.id) if integer_key else mark.id

    def _range(
        self, table: Table, after: Watermark | None, last: Watermark | None
    ) -> list[ColumnElement[bool]]:
        updated, key = table.c[self._source.updated_at_column], table.c[self._source.key_column]
        clauses: list[ColumnElement[bool]] = [
            table.c[name] == value for name, value in self._source.where.items()
        ]
        # Each bound also as a plain range on the version, implied by the keyset condition:
        # the OR alone is no index condition, so every batch would scan the rows before it.
        if after is not None:
            version, key_value = self._bound(table, after)
            clauses.append(updated >= version)
            clauses.append(or_(updated > version, and_(updated == version, key > key_value)))
        if last is not None:
            version, key_value = self._bound(table, last)
            clauses.append(updated <= version)
            clauses.append(or_(updated < version, and_(updated == version, key <= key_value)))
        return clauses

    async def _fetch(self, statement: Select[Any]) -> Sequence[Any]:
        engine = await self._provider.ready_engine()
        try:
            async with engine.connect() as connection:
                rows: Sequence[Any] = (await connection.execute(statement)).all()
                return rows
        except (exc.DBAPIError, OSError) as error:
            raise self._unavailable(error) from error

    def _ordered(self, table: Table, statement: Select[Any]) -> Select[Any]:
        return statement.order_by(
            table.c[self._source.updated_at_column], table.c[self._source.key_column]
        )

    async def next_batch(self, after: Watermark | None, limit: int) -> ChangeBatch:
        """The next ``limit`` rows after ``after``, in keyset order: their count and last key."""
        table = await self._reflected()
        key, updated = table.c[self._source.key_column], table.c[self._source.updated_at_column]
        statement = self._ordered(
            table, select(updated, key).where(*self._range(table, after, None)).limit(limit)
        )
        keys = await self._fetch(statement)
        if not keys:
            return ChangeBatch(after=after, last=None, count=0)
        version, key_value = keys[-1]
        last = Watermark(version=to_version(version), id=str(key_value))
        return ChangeBatch(after=after, last=last, count=len(keys))

    async def rows(self, after: Watermark | None, last: Watermark | None) -> list[SourceRow]:
        """Every row in (after, last], with its fields as the source holds them."""
        table = await self._reflected()
        source = self._source
        statement = self._ordered(table, select(table).where(*self._range(table, after, last)))
        # Names zipped with each row: Row._asdict() rebuilds its key view for every row.
        names = table.c.keys()
        found = []
        for row in await self._fetch(statement):
            values = dict(zip(names, row, strict=True))
            deleted = bool(values.pop(source.deleted_column)) if source.deleted_column else False
            data = values[source.data_column] if source.data_column else values
            found.append(
                SourceRow(
                    id=str(values[source.key_column]),
                    version=to_version(values[source.updated_at_column]),
                    deleted=deleted,
                    data=dict(data or {}),
                )
            )
        return found

    async def versions(
        self, after: Watermark | None, last: Watermark | None
    ) -> list[RecordVersion]:
        """Id, version and tombstone flag of every row in (after, last]: what verification
        compares with the targets, without reading the fields."""
        table = await self._reflected()
        source = self._source
        columns = [table.c[source.key_column], table.c[source.updated_at_column]]
        if source.deleted_column:
            columns.append(table.c[source.deleted_column])
        statement = select(*columns).where(*self._range(table, after, last))
        return [
            RecordVersion(
                id=str(values[0]),
                version=to_version(values[1]),
                deleted=bool(values[2]) if source.deleted_column else False,
            )
            for values in await self._fetch(statement)
        ]
