"""Decoding PostgreSQL's ``pgoutput`` logical replication messages (protocol version 1).

Only what change capture needs: transaction boundaries (with their commit position and time),
relations (which column is the key) and the keys of inserted, updated and deleted rows.
Message layouts: https://www.postgresql.org/docs/15/protocol-logicalrep-message-formats.html
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from nexpo_workflows.sync.capture.base import CaptureLostError, LogSegment

# pgoutput's timestamps count microseconds from 2000-01-01 UTC.
POSTGRES_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
# Types whose text form equals the value a dataset's ``where`` compares with.
TEXT_TYPES = {25, 1043, 19}  # text, varchar, name

_INT16 = struct.Struct("!h")
_INT32 = struct.Struct("!i")
_INT64 = struct.Struct("!q")


@dataclass(slots=True)
class Relation:
    columns: list[str]
    type_oids: list[int]


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def byte(self) -> str:
        self.at += 1
        return chr(self.data[self.at - 1])

    def int16(self) -> int:
        (value,) = _INT16.unpack_from(self.data, self.at)
        self.at += 2
        return int(value)

    def int32(self) -> int:
        (value,) = _INT32.unpack_from(self.data, self.at)
        self.at += 4
        return int(value)

    def int64(self) -> int:
        (value,) = _INT64.unpack_from(self.data, self.at)
        self.at += 8
        return int(value)

    def string(self) -> str:
        end = self.data.index(0, self.at)
        text = self.data[self.at : end].decode()
        self.at = end + 1
        return text

    def tuple(self) -> list[str | None]:
        """A row's columns as text; None for NULL and for an unchanged TOASTed value."""
        values: list[str | None] = []
        for _ in range(self.int16()):
            kind = self.byte()
            if kind == "t":
                length = self.int32()
                values.append(self.data[self.at : self.at + length].decode())
                self.at += length
            else:  # "n" null, "u" unchanged toast: the key is never either
                values.append(None)
        return values


def lsn_to_int(lsn: str) -> int:
    high, _, low = lsn.partition("/")
    return (int(high, 16) << 32) + int(low, 16)


class ChangeDecoder:
    """Folds a peek's messages into a LogSegment for one table's key column."""

    def __init__(self, key_column: str, where: dict[str, str], start: int) -> None:
        self._key_column = key_column
        self._where = where
        self._relations: dict[int, Relation] = {}
        self.segment = LogSegment(start=start)
        # The current transaction's changes: (key, removed from the dataset).
        self._pending: list[tuple[str, bool]] = []

    def _belongs(self, relation: Relation, row: list[str | None]) -> bool:
        """False only when a text column of ``where`` shows the row is not the dataset's."""
        for name, expected in self._where.items():
            if name in relation.columns:
                index = relation.columns.index(name)
                if relation.type_oids[index] in TEXT_TYPES and row[index] not in (None, expected):
                    return False
        return True

    def _key(self, relation: Relation, row: list[str | None]) -> str | None:
        if self._key_column not in relation.columns:
            return None
        return row[relation.columns.index(self._key_column)]

    def _keep(self, relation: Relation, kind: str, rows: list[list[str | None]]) -> None:
        """An insert keeps its row's key; a delete removes its key unless the key's tuple shows
        another dataset's row; an update removes the old key when the key changed, and keeps
        the new one, or removes it when the new row left the dataset."""
        *old, new = rows
        if kind == "D":
            if self._belongs(relation, new):
                self._record(self._key(relation, new), removed=True)
            return
        if old and (previous := self._key(relation, old[0])) != self._key(relation, new):
            self._record(previous, removed=True)
        self._record(self._key(relation, new), removed=not self._belongs(relation, new))

    def _record(self, key: str | None, *, removed: bool) -> None:
        if key is not None:
            self._pending.append((key, removed))
            self.segment.count += 1

    def feed(self, message: bytes) -> None:
        reader = _Reader(message)
        kind = reader.byte()
        if kind == "B":
            reader.int64()  # final LSN
            committed = POSTGRES_EPOCH + timedelta(microseconds=reader.int64())
            if self.segment.oldest_commit is None:
                self.segment.oldest_commit = committed
            self._pending = []
        elif kind == "C":
            reader.byte()  # flags
            reader.int64()  # commit LSN
            end = reader.int64()
            for key, removed in self._pending:
                # Re-inserted so the dict keeps the order of each key's last change.
                self.segment.changes.pop(key, None)
                self.segment.changes[key] = (end, removed)
            self.segment.end = end
            self._pending = []
        elif kind == "R":
            relation_id = reader.int32()
            reader.string()  # namespace
            reader.string()  # name
            reader.byte()  # replica identity setting
            columns, oids = [], []
            for _ in range(reader.int16()):
                reader.byte()  # flags (part of the key)
                columns.append(reader.string())
                oids.append(reader.int32())
                reader.int32()  # type modifier
            self._relations[relation_id] = Relation(columns, oids)
        elif kind in "IUD":
            relation = self._relations[reader.int32()]
            rows = []
            while reader.at < len(message):
                marker = reader.byte()  # "K" key, "O" old row, "N" new row
                if marker in "KON":
                    rows.append(reader.tuple())
            self._keep(relation, kind, rows)
        elif kind == "T":
            raise CaptureLostError(
                "the source table was truncated, which a change log cannot replay row by row: "
                "run `nexpo-workflows sync reset DATASET`, then sync it again to copy it anew"
            )
        # "O" origin, "Y" type, "M" message: nothing to capture.
