"""SQL Server: Change Tracking.

The table is tracked (``ENABLE CHANGE_TRACKING``; the database must have change tracking on,
which is an operator's choice of retention, so it is asked for, not done). A position is a
change tracking version; ``CHANGETABLE(CHANGES ...)`` gives each key changed after a version,
with its last operation. Reads run under snapshot isolation, as Microsoft documents, so a read
never sees a version whose transaction is not visible yet. Change tracking keeps no queue to
consume: the confirmed version is stored in ``nexpo_change_positions``, and a version older
than ``CHANGE_TRACKING_MIN_VALID_VERSION`` (the retention passed) means the dataset must be
copied again.

Not run here (no SQL Server exists on this machine): tests/test_sync_capture.py runs it only
when ``MSSQL_URL`` names a real server.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
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

_POSITIONS = (
    "IF OBJECT_ID('nexpo_change_positions') IS NULL CREATE TABLE nexpo_change_positions"
    " (dataset NVARCHAR(100) PRIMARY KEY, seq BIGINT NOT NULL)"
)


class SQLServerChangeLog(ChangeLog):
    async def _run(
        self, work: Callable[[AsyncConnection], Awaitable[T]], *, snapshot: bool = False
    ) -> T:
        engine = await self._provider.ready_engine()
        try:
            async with engine.connect() as plain:
                connection = (
                    await plain.execution_options(isolation_level="SNAPSHOT") if snapshot else plain
                )
                async with connection.begin():
                    return await work(connection)
        except (exc.DBAPIError, OSError) as error:
            raise ProviderUnavailableError(f"{self._provider.name}: {first_line(error)}") from error

    def _table(self, connection: AsyncConnection) -> str:
        return connection.dialect.identifier_preparer.quote(self._source.table)

    async def _tracked(self, connection: AsyncConnection) -> bool:
        found = await connection.execute(
            text(
                "SELECT count(*) FROM sys.change_tracking_tables"
                " WHERE object_id = OBJECT_ID(:table)"
            ),
            {"table": self._source.table},
        )
        return bool(found.scalar_one())

    async def _confirmed(self, connection: AsyncConnection) -> int:
        seq = (
            await connection.execute(
                text("SELECT seq FROM nexpo_change_positions WHERE dataset = :dataset"),
                {"dataset": self._dataset},
            )
        ).scalar_one_or_none()
        if seq is None:
            raise CaptureLostError(
                f"{self._dataset} has no change tracking position: sync it again to copy the table"
            )
        oldest = (
            await connection.execute(
                text("SELECT CHANGE_TRACKING_MIN_VALID_VERSION(OBJECT_ID(:table))"),
                {"table": self._source.table},
            )
        ).scalar_one()
        if oldest is None or int(seq) < int(oldest):
            raise CaptureLostError(
                f"change tracking of {self._source.table!r} no longer holds the changes after "
                f"version {seq} (its retention passed): run `nexpo-workflows sync reset "
                f"{self._dataset}`, then sync it again to copy the table anew"
            )
        return int(seq)

    async def exists(self) -> bool:
        async def find(connection: AsyncConnection) -> bool:
            await connection.execute(text(_POSITIONS))
            positioned = await connection.execute(
                text("SELECT count(*) FROM nexpo_change_positions WHERE dataset = :dataset"),
                {"dataset": self._dataset},
            )
            return bool(positioned.scalar_one()) and await self._tracked(connection)

        return await self._run(find)

    async def _check_source(self, connection: AsyncConnection) -> None:
        on = await connection.execute(
            text("SELECT count(*) FROM sys.change_tracking_databases WHERE database_id = DB_ID()")
        )
        if not on.scalar_one():
            raise CaptureRefusedError(
                f"{self._provider.name}: change tracking is off for the database; turn it "
                "on (ALTER DATABASE CURRENT SET CHANGE_TRACKING = ON (CHANGE_RETENTION = 7 "
                "DAYS, AUTO_CLEANUP = ON)) and allow snapshot isolation (ALTER DATABASE "
                'CURRENT SET ALLOW_SNAPSHOT_ISOLATION ON), or set the dataset\'s "capture": '
                '"poll", which misses hard deletes and rows committed late'
            )
        keyed = await connection.execute(
            text(
                "SELECT count(*) FROM sys.indexes WHERE object_id = OBJECT_ID(:table)"
                " AND is_primary_key = 1"
            ),
            {"table": self._source.table},
        )
        if not keyed.scalar_one():
            raise CaptureRefusedError(
                f"table {self._source.table!r} has no primary key, which change tracking needs"
            )

    async def check(self) -> None:
        await self._run(self._check_source)

    async def ensure(self) -> int | None:
        async def install(connection: AsyncConnection) -> int | None:
            await self._check_source(connection)
            await connection.execute(text(_POSITIONS))
            positioned = await connection.execute(
                text("SELECT count(*) FROM nexpo_change_positions WHERE dataset = :dataset"),
                {"dataset": self._dataset},
            )
            if positioned.scalar_one() and await self._tracked(connection):
                return None
            if not await self._tracked(connection):
                await connection.execute(
                    text(f"ALTER TABLE {self._table(connection)} ENABLE CHANGE_TRACKING")
                )
            start = int(
                (
                    await connection.execute(text("SELECT CHANGE_TRACKING_CURRENT_VERSION()"))
                ).scalar_one()
            )
            await connection.execute(
                text("DELETE FROM nexpo_change_positions WHERE dataset = :dataset"),
                {"dataset": self._dataset},
            )
            await connection.execute(
                text("INSERT INTO nexpo_change_positions (dataset, seq) VALUES (:dataset, :seq)"),
                {"dataset": self._dataset, "seq": start},
            )
            return start

        return await self._run(install)

    async def position(self) -> int:
        return await self._run(self._confirmed)

    async def current(self) -> int:
        async def now(connection: AsyncConnection) -> int:
            version = await connection.execute(text("SELECT CHANGE_TRACKING_CURRENT_VERSION()"))
            return int(version.scalar_one() or 0)

        return await self._run(now, snapshot=True)

    async def read(self, *, limit: int | None = None, upto: int | None = None) -> LogSegment:
        async def select(connection: AsyncConnection) -> LogSegment:
            segment = LogSegment(start=await self._confirmed(connection))
            key = connection.dialect.identifier_preparer.quote(self._source.key_column)
            changes = f"CHANGETABLE(CHANGES {self._table(connection)}, :after) AS ct"
            bound = "ct.SYS_CHANGE_VERSION <= :upto"
            values = {"after": segment.start, "upto": upto if upto is not None else 2**62}
            if limit is not None:
                # Whole versions only: a transaction's keys share its version.
                last = (
                    await connection.execute(
                        text(
                            "SELECT max(v) FROM (SELECT TOP (:limit) ct.SYS_CHANGE_VERSION AS v"
                            f" FROM {changes} WHERE {bound} ORDER BY ct.SYS_CHANGE_VERSION) AS t"
                        ),
                        {**values, "limit": limit},
                    )
                ).scalar_one()
                values["upto"] = last if last is not None else segment.start
            rows = await connection.execute(
                text(
                    f"SELECT ct.SYS_CHANGE_VERSION, ct.SYS_CHANGE_OPERATION, ct.{key}"
                    f" FROM {changes} WHERE {bound} ORDER BY ct.SYS_CHANGE_VERSION"
                ),
                values,
            )
            for version, operation, changed in rows:
                segment.changes[str(changed)] = (int(version), operation == "D")
                segment.count += 1
                segment.end = int(version)
            return segment

        return await self._run(select, snapshot=True)

    async def confirm(self, position: int) -> None:
        async def release(connection: AsyncConnection) -> None:
            await connection.execute(
                text(
                    "UPDATE nexpo_change_positions SET seq = :seq"
                    " WHERE dataset = :dataset AND seq < :seq"
                ),
                {"dataset": self._dataset, "seq": position},
            )

        await self._run(release)

    async def lag(self) -> CaptureLag:
        segment = await self.read()
        # Change tracking records no commit time.
        return CaptureLag(pending=segment.count, unit="changes", seconds=None)

    async def drop(self) -> bool:
        async def remove(connection: AsyncConnection) -> bool:
            await connection.execute(text(_POSITIONS))
            removed = await connection.execute(
                text("DELETE FROM nexpo_change_positions WHERE dataset = :dataset"),
                {"dataset": self._dataset},
            )
            # Tracking stays on: other datasets may read the table, and it holds nothing back
            # (its retention cleans up).
            return bool(removed.rowcount)

        return await self._run(remove)
