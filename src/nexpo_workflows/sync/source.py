"""Reading a dataset from its source table: by keyset on (version, id) when polling, on the
key alone for log capture's copy of the table, and by key for the keys a log names.

The table is reflected once, so its column types decide how a watermark maps back to SQL
(a timestamp from microseconds, an integer id from its text) and rows are read with plain
SQLAlchemy Core: portable to every SQL provider.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

from sqlalchemy import (
    Boolean,
    ColumnElement,
    Date,
    DateTime,
    Float,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    and_,
    exc,
    or_,
    select,
)
from sqlalchemy.sql import Select
from sqlalchemy.sql.compiler import SQLCompiler

from nexpo_workflows.errors import first_line
from nexpo_workflows.providers.base import ProviderUnavailableError, RecordVersion
from nexpo_workflows.providers.sql import (
    IN_LIST_CHUNK,
    SQLProvider,
    asyncpg_connection,
    postgres_row_hash,
)
from nexpo_workflows.sync.models import (
    CaptureMode,
    ChangeBatch,
    PositionKind,
    SyncSource,
    Watermark,
)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class SourceConfigError(Exception):
    """The source table or one of its configured columns does not exist."""


@dataclass(slots=True)
class SourceRow:
    id: str
    version: int
    deleted: bool
    data: dict[str, Any]


@dataclass(slots=True)
class EncodedRows:
    """Rows of a batch as the database encodes them: keys, tombstone flags and ``row_hash``
    of each row in key order, and the fields of the rows that are not tombstones as one JSON
    array (in the same order)."""

    ids: list[str]
    deleted: list[bool]
    hashes: list[int]
    live: str


# The alias of a batch's row in the encoded read: no column may bear it.
_ENCODED_ROW = "nexpo_row"


def _plain_annotation(annotation: Any) -> Any:
    """``annotation`` without its constraints (Annotated) and without None (Optional)."""
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    arguments = [a for a in get_args(annotation) if a is not type(None)]
    if get_origin(annotation) in (Union, UnionType) and len(arguments) == 1:
        return _plain_annotation(arguments[0])
    return annotation


def _encodes_alike(column_type: Any, annotation: Any) -> bool:
    """Whether a field of ``annotation`` checks a value of this column as PostgreSQL's JSON
    gives it (numeric as text) exactly as it checks what asyncpg gives: text and integers
    whatever the field; numeric, booleans, timestamps and dates only into the field types
    they are meant for (a timestamp as JSON text would pass a ``str`` field a datetime fails)."""
    if isinstance(column_type, String | Integer):
        return True
    plain = _plain_annotation(annotation)
    if isinstance(column_type, Numeric):
        return not isinstance(column_type, Float) and plain in (Decimal, int, float)
    if isinstance(column_type, Boolean):
        return plain is bool
    if isinstance(column_type, DateTime):
        return plain is datetime
    if isinstance(column_type, Date):
        return plain is date
    return False


def _encoded_column(column_type: Any, column: str) -> str:
    """How the encoded read gives a column: numeric as its text (JSON numbers lose trailing
    zeros), a timestamp with time zone in UTC whatever the session's zone (as asyncpg gives
    it), in JSON's ISO format whatever the DateStyle."""
    if isinstance(column_type, Numeric):
        return f"{column}::text"
    if isinstance(column_type, DateTime) and column_type.timezone:
        return f"(to_json({column} AT TIME ZONE 'UTC') #>> '{{}}') || '+00:00'"
    return column


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
                polled = self._source.capture is CaptureMode.POLL
                wanted = [
                    self._source.key_column,
                    *([self._source.updated_at_column] if polled else []),
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

    def _key_value(self, table: Table, key: str) -> Any:
        return int(key) if isinstance(table.c[self._source.key_column].type, Integer) else key

    def _bound(self, table: Table, mark: Watermark) -> tuple[Any, Any]:
        version_type = table.c[self._source.updated_at_column].type
        if isinstance(version_type, DateTime):
            seconds, micros = divmod(mark.version, 1_000_000)
            moment = datetime.fromtimestamp(seconds, UTC).replace(microsecond=micros)
            naive = not version_type.timezone
            version: Any = moment.replace(tzinfo=None) if naive else moment
        else:
            version = mark.version
        return version, self._key_value(table, mark.id)

    def _where(self, table: Table) -> list[ColumnElement[bool]]:
        return [table.c[name] == value for name, value in self._source.where.items()]

    def _range(
        self, table: Table, after: Watermark | None, last: Watermark | None
    ) -> list[ColumnElement[bool]]:
        key = table.c[self._source.key_column]
        clauses = self._where(table)
        if (last or after or Watermark(version=0)).kind is PositionKind.SNAPSHOT:
            if after is not None and after.id:
                clauses.append(key > self._key_value(table, after.id))
            if last is not None:
                clauses.append(key <= self._key_value(table, last.id))
            return clauses
        updated = table.c[self._source.updated_at_column]
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

    async def _fetch_dicts(self, statement: Select[Any]) -> list[dict[str, Any]]:
        """The rows of ``statement`` as dicts by column name. From PostgreSQL straight from
        asyncpg's records, past SQLAlchemy's result rows: reading a batch is then one pass in
        C and one dict per row."""
        engine = await self._provider.ready_engine()
        try:
            if engine.dialect.name != "postgresql":
                async with engine.connect() as connection:
                    result = await connection.execute(statement)
                    names = list(result.keys())
                    return [dict(zip(names, row, strict=True)) for row in result]
            sql, parameters = _driver_query(statement, engine.dialect)
            async with asyncpg_connection(engine, sql) as driver:
                records = await driver.fetch(sql, *parameters)
                if not records:
                    return []
                names = list(records[0].keys())
                # zip over the record's values: half the time of ``dict(record.items())``.
                return [dict(zip(names, record, strict=True)) for record in records]
        except (exc.DBAPIError, OSError) as error:
            raise self._unavailable(error) from error

    def _ordered(self, table: Table, statement: Select[Any], kind: PositionKind) -> Select[Any]:
        key = table.c[self._source.key_column]
        if kind is PositionKind.SNAPSHOT:
            return statement.order_by(key)
        return statement.order_by(table.c[self._source.updated_at_column], key)

    async def last_key(self) -> str | None:
        """The dataset's largest key, None when it has no row."""
        table = await self._reflected()
        key = table.c[self._source.key_column]
        rows = await self._fetch(
            select(key).where(*self._where(table)).order_by(key.desc()).limit(1)
        )
        return str(rows[0][0]) if rows else None

    async def next_batch(
        self, after: Watermark | None, limit: int, until: str | None = None
    ) -> ChangeBatch:
        """The next ``limit`` rows after ``after``, in keyset order: their count and last key.
        A SNAPSHOT ``after`` (the copy's version, the last key copied or "") orders by key and
        ends at the key ``until``."""
        table = await self._reflected()
        key = table.c[self._source.key_column]
        kind = after.kind if after is not None else PositionKind.VERSIONS
        if kind is PositionKind.SNAPSHOT:
            columns = [key]
        else:
            columns = [table.c[self._source.updated_at_column], key]
        last = after.model_copy(update={"id": until}) if after and until is not None else None
        statement = self._ordered(
            table, select(*columns).where(*self._range(table, after, last)).limit(limit), kind
        )
        keys = await self._fetch(statement)
        if not keys:
            return ChangeBatch(after=after, last=None, count=0)
        if after is not None and kind is PositionKind.SNAPSHOT:
            last = after.model_copy(update={"id": str(keys[-1][0])})
        else:
            version, key_value = keys[-1]
            last = Watermark(version=to_version(version), id=str(key_value))
        return ChangeBatch(after=after, last=last, count=len(keys))

    def _source_row(self, values: dict[str, Any], version: int) -> SourceRow:
        """A row from ``values``, a dict of its own (taken over, not copied)."""
        source = self._source
        deleted = bool(values.pop(source.deleted_column)) if source.deleted_column else False
        data = dict(values[source.data_column] or {}) if source.data_column else values
        return SourceRow(
            id=str(values[source.key_column]), version=version, deleted=deleted, data=data
        )

    async def next_rows(
        self, after: Watermark, limit: int, until: str | None = None
    ) -> list[SourceRow]:
        """Log capture's copy of the table: the next ``limit`` rows after the key ``after.id``
        up to the key ``until``, with their fields, each with the copy's version; the batch
        ``next_batch`` would name, read in the same query as its rows."""
        assert after.kind is PositionKind.SNAPSHOT
        table = await self._reflected()
        last = after.model_copy(update={"id": until}) if until is not None else None
        statement = self._ordered(
            table,
            select(table).where(*self._range(table, after, last)).limit(limit),
            PositionKind.SNAPSHOT,
        )
        return [
            self._source_row(values, after.version) for values in await self._fetch_dicts(statement)
        ]

    async def encoded_rows(
        self,
        after: Watermark,
        limit: int,
        until: str | None,
        fields: dict[str, Any],
        columns: list[str] | None,
    ) -> EncodedRows | None:
        """The rows ``next_rows`` reads, encoded by PostgreSQL: the fields of each row as JSON
        (only ``columns`` when given), the row hashes computed there; one value per batch to
        decode here, not one per field of every row. None where the result could differ from
        ``next_rows`` under the checks of ``fields`` (another engine, a JSON column of fields,
        a column type JSON carries otherwise into the field it fills)."""
        assert after.kind is PositionKind.SNAPSHOT
        table = await self._reflected()
        source = self._source
        engine = await self._provider.ready_engine()
        key = table.c[source.key_column]
        deleted = table.c[source.deleted_column] if source.deleted_column else None
        names = [c.name for c in table.columns if deleted is None or c.name != deleted.name]
        if columns is not None:
            names = [name for name in columns if name in names]
        if (
            engine.dialect.name != "postgresql"
            or source.data_column is not None
            or _ENCODED_ROW in table.c
            or not isinstance(key.type, String | Integer)
            or (deleted is not None and not isinstance(deleted.type, Boolean))
            or not all(
                _encodes_alike(table.c[name].type, fields[name]) for name in names if name in fields
            )
        ):
            return None
        last = after.model_copy(update={"id": until}) if until is not None else None
        inner, parameters = _driver_query(
            self._ordered(
                table,
                select(table).where(*self._range(table, after, last)).limit(limit),
                PositionKind.SNAPSHOT,
            ),
            engine.dialect,
        )
        quote = engine.dialect.identifier_preparer.quote
        order = f"b.{quote(key.name)}"
        gone = f"coalesce(b.{quote(deleted.name)}, false)" if deleted is not None else "false"
        encoded = ", ".join(
            f"{_encoded_column(table.c[name].type, f'b.{quote(name)}')} AS {quote(name)}"
            for name in names
        )
        row_hash = postgres_row_hash(f"{order}::text", str(after.version), gone)
        statement = (
            f"WITH batch AS ({inner}) SELECT"
            f" (SELECT coalesce(json_agg({_ENCODED_ROW} ORDER BY {order}), '[]')::text"
            f" FROM batch AS b CROSS JOIN LATERAL (SELECT {encoded}) AS {_ENCODED_ROW}"
            f" WHERE NOT {gone}),"
            f" array_agg({order}::text ORDER BY {order}), array_agg({gone} ORDER BY {order}),"
            f" array_agg({row_hash} ORDER BY {order}) FROM batch AS b"
        )
        try:
            async with asyncpg_connection(engine, statement) as driver:
                found = await driver.fetch(statement, *parameters)
        except (exc.DBAPIError, OSError) as error:
            raise self._unavailable(error) from error
        live, ids, flags, hashes = found[0]
        return EncodedRows(ids=ids or [], deleted=flags or [], hashes=hashes or [], live=live)

    async def rows(self, after: Watermark | None, last: Watermark | None) -> list[SourceRow]:
        """Every row in (after, last], with its fields as the source holds them."""
        table = await self._reflected()
        kind = (last or after or Watermark(version=0)).kind
        statement = self._ordered(
            table, select(table).where(*self._range(table, after, last)), kind
        )
        found = []
        for values in await self._fetch_dicts(statement):
            version = (
                to_version(values[self._source.updated_at_column])
                if kind is PositionKind.VERSIONS
                else (last or after or Watermark(version=0)).version
            )
            found.append(self._source_row(values, version))
        return found

    async def rows_by_key(self, versions: dict[str, int]) -> list[SourceRow]:
        """The rows of these keys that are in the dataset now, each with the given version
        (its last change's log position); a key not returned is gone from the dataset."""
        table = await self._reflected()
        key = table.c[self._source.key_column]
        found = []
        wanted = list(versions)
        for start in range(0, len(wanted), IN_LIST_CHUNK):
            chunk = [self._key_value(table, k) for k in wanted[start : start + IN_LIST_CHUNK]]
            statement = select(table).where(*self._where(table), key.in_(chunk))
            for values in await self._fetch_dicts(statement):
                found.append(self._source_row(values, versions[str(values[key.name])]))
        return found

    async def versions(
        self, after: Watermark | None, last: Watermark | None
    ) -> list[RecordVersion]:
        """Id, version and tombstone flag of every row in (after, last]: what verification
        compares with the targets, without reading the fields."""
        table = await self._reflected()
        source = self._source
        assert (last or after or Watermark(version=0)).kind is PositionKind.VERSIONS
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


def _driver_query(statement: Select[Any], dialect: Any) -> tuple[str, list[Any]]:
    """``statement`` as the driver's own SQL, its IN lists expanded, and its parameters' values
    in order: for the driver itself, past SQLAlchemy's result rows."""
    compiled = statement.compile(dialect=dialect, compile_kwargs={"render_postcompile": True})
    assert isinstance(compiled, SQLCompiler)
    assert compiled.positiontup is not None
    values = compiled.construct_params()
    return str(compiled), [values[name] for name in compiled.positiontup]
