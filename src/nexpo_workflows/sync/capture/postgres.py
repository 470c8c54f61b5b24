"""PostgreSQL: logical decoding with ``pgoutput``, read through SQL.

A publication (``FOR TABLE``) and a logical replication slot per dataset, both named after it.
``pg_logical_slot_peek_binary_changes`` reads without consuming, so every step of a batch
re-reads the same changes (``upto`` the batch's last commit), and
``pg_replication_slot_advance`` confirms them once verified. ``pgoutput`` ships with the
server (no extension to install), is what PostgreSQL's own logical replication, Debezium and
PeerDB read, and its publications decide per table what is decoded.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import exc, text
from sqlalchemy.ext.asyncio import AsyncConnection

from nexpo_workflows.errors import first_line
from nexpo_workflows.providers.base import ProviderUnavailableError
from nexpo_workflows.providers.sql import SQLProvider
from nexpo_workflows.sync.capture.base import (
    CaptureLag,
    CaptureLostError,
    CaptureRefusedError,
    ChangeLog,
    LogSegment,
)
from nexpo_workflows.sync.capture.pgoutput import ChangeDecoder, lsn_to_int
from nexpo_workflows.sync.models import SyncSource

PREFIX = "nexpo_sync_"
NAME_LIMIT = 63  # PostgreSQL's identifier length
# SQLSTATEs of a slot that is gone or invalidated; others (one in use: 55006) are retried.
_GONE = {"42704", "55000"}


def slot_name(dataset: str) -> str:
    """``nexpo_sync_<dataset>``, shortened with a digest past PostgreSQL's 63 characters."""
    name = PREFIX + dataset
    if len(name) <= NAME_LIMIT:
        return name
    return name[: NAME_LIMIT - 9] + "_" + hashlib.sha256(dataset.encode()).hexdigest()[:8]


def _sqlstate(error: exc.DBAPIError) -> str | None:
    code = getattr(error.orig, "sqlstate", None) or getattr(error.orig, "pgcode", None)
    return str(code) if code else None


class PostgresChangeLog(ChangeLog):
    """Positions are LSNs as integers, which asyncpg binds as ``pg_lsn`` directly."""

    def __init__(self, provider: SQLProvider, source: SyncSource, dataset: str) -> None:
        super().__init__(provider, source, dataset)
        self.slot = self.publication = slot_name(dataset)

    def _refused_or_unavailable(self, error: exc.DBAPIError | OSError) -> Exception:
        state = _sqlstate(error) if isinstance(error, exc.DBAPIError) else None
        if state in _GONE:
            return CaptureLostError(
                f"replication slot {self.slot}: {first_line(error)}; run "
                f"`nexpo-workflows sync reset {self._dataset}`, then sync it again to copy the "
                "table anew"
            )
        return ProviderUnavailableError(f"{self._provider.name}: {first_line(error)}")

    async def _run(self, work: Any, *, autocommit: bool = False) -> Any:
        engine = await self._provider.ready_engine()
        try:
            if autocommit:
                async with engine.connect() as plain:
                    connection = await plain.execution_options(isolation_level="AUTOCOMMIT")
                    return await work(connection)
            async with engine.begin() as connection:
                return await work(connection)
        except (CaptureRefusedError, ProviderUnavailableError):
            raise
        except (exc.DBAPIError, OSError) as error:
            raise self._refused_or_unavailable(error) from error

    async def _check_source(self, connection: AsyncConnection) -> None:
        """Refuse, with what to change, a server or table logical decoding cannot serve."""
        level = (await connection.execute(text("SHOW wal_level"))).scalar_one()
        if level != "logical":
            raise CaptureRefusedError(
                f"{self._provider.name} runs with wal_level={level}; capturing changes from "
                "its log needs wal_level=logical (postgresql.conf, then a restart). Or set the "
                f'dataset\'s source "capture": "poll", which reads a version column and misses '
                "hard deletes and rows whose transaction commits after a newer row was synced"
            )
        identity = (
            await connection.execute(
                text(
                    "SELECT c.relreplident, ARRAY(SELECT a.attname::text FROM pg_index i"
                    " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)"
                    " WHERE i.indrelid = c.oid AND CASE WHEN c.relreplident = 'i'"
                    " THEN i.indisreplident ELSE i.indisprimary END)"
                    " FROM pg_class c WHERE c.oid = to_regclass(:table)"
                ),
                {"table": self._quoted_table(connection)},
            )
        ).first()
        if identity is None:
            raise CaptureRefusedError(f"{self._provider.name} has no table {self._source.table!r}")
        setting, columns = identity
        if setting != "f" and self._source.key_column not in columns:
            raise CaptureRefusedError(
                f"table {self._source.table!r} has no primary key or replica identity "
                f"containing {self._source.key_column!r}, so its deletes would not say which "
                "row went: add a primary key, or ALTER TABLE ... REPLICA IDENTITY FULL"
            )

    async def check(self) -> None:
        await self._run(self._check_source)

    def _quoted_table(self, connection: AsyncConnection) -> str:
        return connection.dialect.identifier_preparer.quote(self._source.table)

    async def exists(self) -> bool:
        async def find(connection: AsyncConnection) -> bool:
            database = await self._slot_database(connection)
            return database is not None

        result: bool = await self._run(find)
        return result

    async def _slot_database(self, connection: AsyncConnection) -> str | None:
        found = (
            await connection.execute(
                text("SELECT database FROM pg_replication_slots WHERE slot_name = :slot"),
                {"slot": self.slot},
            )
        ).first()
        if found is None:
            return None
        here = (await connection.execute(text("SELECT current_database()"))).scalar_one()
        if found[0] != here:
            raise CaptureRefusedError(
                f"replication slot {self.slot} belongs to database {found[0]!r}, not "
                f"{here!r}: give the dataset another name"
            )
        return str(found[0])

    async def ensure(self) -> int | None:
        async def create(connection: AsyncConnection) -> int | None:
            await self._check_source(connection)
            if await self._slot_database(connection) is not None:
                return None
            published = (
                await connection.execute(
                    text("SELECT 1 FROM pg_publication WHERE pubname = :name"),
                    {"name": self.publication},
                )
            ).first()
            if published is None:
                await connection.execute(
                    text(
                        f'CREATE PUBLICATION "{self.publication}" FOR TABLE '
                        f"{self._quoted_table(connection)}"
                    )
                )
            # Outside any transaction that wrote: the slot's consistent point comes after
            # the publication, so every change it decodes is published.
            lsn = (
                await connection.execute(
                    text(
                        "SELECT lsn::text FROM pg_create_logical_replication_slot(:slot, "
                        "'pgoutput')"
                    ),
                    {"slot": self.slot},
                )
            ).scalar_one()
            return lsn_to_int(lsn)

        created: int | None = await self._run(create, autocommit=True)
        return created

    async def _confirmed(self, connection: AsyncConnection) -> int:
        lsn = (
            await connection.execute(
                text(
                    "SELECT confirmed_flush_lsn::text FROM pg_replication_slots"
                    " WHERE slot_name = :slot"
                ),
                {"slot": self.slot},
            )
        ).scalar_one_or_none()
        if lsn is None:
            raise CaptureLostError(
                f"replication slot {self.slot} does not exist: sync {self._dataset} again "
                "to create it and copy the table"
            )
        return lsn_to_int(lsn)

    async def position(self) -> int:
        position: int = await self._run(self._confirmed)
        return position

    async def current(self) -> int:
        async def now(connection: AsyncConnection) -> int:
            lsn = (await connection.execute(text("SELECT pg_current_wal_lsn()::text"))).scalar_one()
            return lsn_to_int(lsn)

        position: int = await self._run(now)
        return position

    async def read(self, *, limit: int | None = None, upto: int | None = None) -> LogSegment:
        async def peek(connection: AsyncConnection) -> LogSegment:
            decoder = ChangeDecoder(
                self._source.key_column, self._source.where, await self._confirmed(connection)
            )
            result = await connection.execute(
                text(
                    "SELECT data FROM pg_logical_slot_peek_binary_changes(:slot, "
                    "CAST(:upto AS pg_lsn), :limit, 'proto_version', '1', "
                    "'publication_names', :publication)"
                ),
                {
                    "slot": self.slot,
                    "upto": upto,
                    "limit": limit,
                    "publication": self.publication,
                },
            )
            for (message,) in result:
                decoder.feed(bytes(message))
            return decoder.segment

        segment: LogSegment = await self._run(peek)
        return segment

    async def confirm(self, position: int) -> None:
        async def advance(connection: AsyncConnection) -> None:
            # Never backwards (PostgreSQL refuses it): a retried confirm is a no-op.
            await connection.execute(
                text(
                    "SELECT pg_replication_slot_advance(slot_name, CAST(:lsn AS pg_lsn))"
                    " FROM pg_replication_slots WHERE slot_name = :slot"
                    " AND confirmed_flush_lsn < CAST(:lsn AS pg_lsn)"
                ),
                {"slot": self.slot, "lsn": position},
            )

        await self._run(advance)

    async def lag(self) -> CaptureLag:
        async def measure(connection: AsyncConnection) -> CaptureLag:
            row = (
                await connection.execute(
                    text(
                        "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint,"
                        " wal_status FROM pg_replication_slots WHERE slot_name = :slot"
                    ),
                    {"slot": self.slot},
                )
            ).first()
            if row is None:
                raise CaptureLostError(f"replication slot {self.slot} does not exist")
            return CaptureLag(pending=int(row[0]), unit="bytes", seconds=None, state=row[1])

        lag: CaptureLag = await self._run(measure)
        if lag.pending and lag.state != "lost":
            try:
                # The oldest pending transaction's commit time; a run reading the slot holds
                # it, and then the age is the run's to report.
                oldest = (await self.read(limit=1)).oldest_commit
            except ProviderUnavailableError:
                return lag
            if oldest is None:
                lag.seconds = 0.0  # what is pending is WAL of other tables
            else:
                lag.seconds = max((datetime.now(UTC) - oldest).total_seconds(), 0.0)
        elif not lag.pending:
            lag.seconds = 0.0
        return lag

    async def drop(self) -> bool:
        async def remove(connection: AsyncConnection) -> bool:
            found = await self._slot_database(connection) is not None
            if found:
                await connection.execute(
                    text("SELECT pg_drop_replication_slot(:slot)"), {"slot": self.slot}
                )
            await connection.execute(text(f'DROP PUBLICATION IF EXISTS "{self.publication}"'))
            return found

        dropped: bool = await self._run(remove, autocommit=True)
        return dropped
