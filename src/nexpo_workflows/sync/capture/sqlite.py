"""SQLite: a change table fed by triggers.

SQLite runs one write transaction at a time, so the ``AUTOINCREMENT`` sequence of
``nexpo_changes`` is commit order and a reader never sees a later sequence number before an
earlier one commits: the same guarantees as a log. Triggers on the source table (one set per
dataset) record each changed key; ``confirm`` deletes the rows up to a position and remembers
it in ``nexpo_change_positions``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from sqlalchemy import exc, text
from sqlalchemy.ext.asyncio import AsyncConnection

from nexpo_workflows.errors import first_line
from nexpo_workflows.providers.base import ProviderUnavailableError
from nexpo_workflows.sync.capture.base import (
    CaptureLag,
    CaptureLostError,
    CaptureRefusedError,
    ChangeLog,
    LogSegment,
)

T = TypeVar("T")
_OPERATIONS = ["insert", "update", "delete"]
# julianday() counts days; the change table stores when each change was recorded.
_JULIAN_UNIX_EPOCH = 2440587.5

_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS nexpo_changes (seq INTEGER PRIMARY KEY AUTOINCREMENT,"
    " dataset TEXT NOT NULL, key TEXT NOT NULL, removed INTEGER NOT NULL,"
    " recorded REAL NOT NULL)",
    "CREATE INDEX IF NOT EXISTS nexpo_changes_by_dataset ON nexpo_changes (dataset, seq)",
    "CREATE TABLE IF NOT EXISTS nexpo_change_positions (dataset TEXT PRIMARY KEY,"
    " seq INTEGER NOT NULL)",
]


class SQLiteChangeLog(ChangeLog):
    def _trigger(self, operation: str) -> str:
        return f"nexpo_sync_{self._dataset}_{operation}"

    async def _run(self, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        engine = await self._provider.ready_engine()
        try:
            async with engine.begin() as connection:
                return await work(connection)
        except (exc.DBAPIError, OSError) as error:
            raise ProviderUnavailableError(f"{self._provider.name}: {first_line(error)}") from error

    async def _installed(self, connection: AsyncConnection) -> bool:
        found = await connection.execute(
            text("SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND name = :name"),
            {"name": self._trigger("delete")},
        )
        return bool(found.scalar_one())

    async def exists(self) -> bool:
        return await self._run(self._installed)

    async def _check_source(self, connection: AsyncConnection) -> None:
        # Triggers see every row change by key: the table is all they need.
        table = (
            await connection.execute(
                text("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = :t"),
                {"t": self._source.table},
            )
        ).scalar_one()
        if not table:
            raise CaptureRefusedError(f"{self._provider.name} has no table {self._source.table!r}")

    async def check(self) -> None:
        await self._run(self._check_source)

    async def ensure(self) -> int | None:
        async def install(connection: AsyncConnection) -> int | None:
            quote = connection.dialect.identifier_preparer.quote
            await self._check_source(connection)
            for statement in _SCHEMA:
                await connection.execute(text(statement))
            if await self._installed(connection):
                return None
            key = quote(self._source.key_column)
            # A row is in the dataset when its columns equal the dataset's ``where`` values;
            # an insert or update that leaves it out removes the key from the dataset.
            belongs = " AND ".join(
                f"NEW.{quote(name)} = '{value.replace(chr(39), chr(39) * 2)}'"
                for name, value in self._source.where.items()
            )
            left = f"CASE WHEN {belongs} THEN 0 ELSE 1 END" if belongs else "0"

            def change(row: str, removed: str, condition: str = "") -> str:
                return (
                    "INSERT INTO nexpo_changes (dataset, key, removed, recorded) SELECT "
                    f"'{self._dataset}', {row}.{key}, {removed}, julianday('now') {condition};"
                )

            bodies = {
                "insert": change("NEW", left),
                # An update that changes the key removes the old one.
                "update": change("OLD", "1", f"WHERE OLD.{key} IS NOT NEW.{key}")
                + change("NEW", left),
                "delete": change("OLD", "1"),
            }
            for operation, body in bodies.items():
                await connection.execute(
                    text(
                        f"CREATE TRIGGER {self._trigger(operation)} AFTER {operation.upper()} "
                        f"ON {quote(self._source.table)} BEGIN {body} END"
                    )
                )
            start = (
                await connection.execute(text("SELECT coalesce(max(seq), 0) FROM nexpo_changes"))
            ).scalar_one()
            await connection.execute(
                text(
                    "INSERT OR REPLACE INTO nexpo_change_positions (dataset, seq)"
                    " VALUES (:dataset, :seq)"
                ),
                {"dataset": self._dataset, "seq": start},
            )
            return int(start)

        return await self._run(install)

    async def _confirmed(self, connection: AsyncConnection) -> int:
        seq = (
            await connection.execute(
                text("SELECT seq FROM nexpo_change_positions WHERE dataset = :dataset"),
                {"dataset": self._dataset},
            )
        ).scalar_one_or_none()
        if seq is None or not await self._installed(connection):
            raise CaptureLostError(
                f"the change table of {self._dataset} is not set up: sync it again to install "
                "its triggers and copy the table"
            )
        return int(seq)

    async def position(self) -> int:
        return await self._run(self._confirmed)

    async def current(self) -> int:
        async def now(connection: AsyncConnection) -> int:
            for statement in _SCHEMA:
                await connection.execute(text(statement))
            seq = await connection.execute(text("SELECT coalesce(max(seq), 0) FROM nexpo_changes"))
            return int(seq.scalar_one())

        return await self._run(now)

    async def read(self, *, limit: int | None = None, upto: int | None = None) -> LogSegment:
        async def select(connection: AsyncConnection) -> LogSegment:
            segment = LogSegment(start=await self._confirmed(connection))
            rows = await connection.execute(
                text(
                    "SELECT seq, key, removed, recorded FROM nexpo_changes WHERE dataset = :dataset"
                    " AND seq > :after AND seq <= :upto ORDER BY seq LIMIT :limit"
                ),
                {
                    "dataset": self._dataset,
                    "after": segment.start,
                    "upto": upto if upto is not None else 2**62,
                    "limit": limit if limit is not None else -1,
                },
            )
            for seq, key, removed, recorded in rows:
                if segment.oldest_commit is None:
                    segment.oldest_commit = _from_julian(recorded)
                segment.changes.pop(key, None)
                segment.changes[key] = (seq, bool(removed))
                segment.count += 1
                segment.end = seq
            return segment

        return await self._run(select)

    async def confirm(self, position: int) -> None:
        async def release(connection: AsyncConnection) -> None:
            await connection.execute(
                text("DELETE FROM nexpo_changes WHERE dataset = :dataset AND seq <= :seq"),
                {"dataset": self._dataset, "seq": position},
            )
            await connection.execute(
                text(
                    "UPDATE nexpo_change_positions SET seq = max(seq, :seq)"
                    " WHERE dataset = :dataset"
                ),
                {"dataset": self._dataset, "seq": position},
            )

        await self._run(release)

    async def lag(self) -> CaptureLag:
        async def measure(connection: AsyncConnection) -> CaptureLag:
            after = await self._confirmed(connection)
            pending, oldest = (
                await connection.execute(
                    text(
                        "SELECT count(*), min(recorded) FROM nexpo_changes"
                        " WHERE dataset = :dataset AND seq > :after"
                    ),
                    {"dataset": self._dataset, "after": after},
                )
            ).one()
            seconds = (
                max((datetime.now(UTC) - _from_julian(oldest)).total_seconds(), 0.0)
                if oldest is not None
                else 0.0
            )
            return CaptureLag(pending=int(pending), unit="changes", seconds=seconds)

        return await self._run(measure)

    async def drop(self) -> bool:
        async def remove(connection: AsyncConnection) -> bool:
            installed = await self._installed(connection)
            for operation in _OPERATIONS:
                await connection.execute(text(f"DROP TRIGGER IF EXISTS {self._trigger(operation)}"))
            exists = (
                await connection.execute(
                    text("SELECT count(*) FROM sqlite_master WHERE name = 'nexpo_changes'")
                )
            ).scalar_one()
            if exists:
                await connection.execute(
                    text("DELETE FROM nexpo_changes WHERE dataset = :dataset"),
                    {"dataset": self._dataset},
                )
                await connection.execute(
                    text("DELETE FROM nexpo_change_positions WHERE dataset = :dataset"),
                    {"dataset": self._dataset},
                )
            return installed

        return await self._run(remove)


def _from_julian(day: float) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(days=day - _JULIAN_UNIX_EPOCH)
